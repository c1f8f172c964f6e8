# Host execution (cuda/host): C++ sources beside C ones. The current
# folder's compile options (the top level's warnings, sanitizers) reach C++
# too, less -Wstrict-prototypes, which is C only.
macro(basin_cxx_compile_options)
  get_directory_property(_basin_inherited COMPILE_OPTIONS)
  set(_basin_opts "")
  foreach(_opt IN LISTS _basin_inherited)
    if(_opt STREQUAL "-Wstrict-prototypes")
      list(APPEND _basin_opts "$<$<COMPILE_LANGUAGE:C>:${_opt}>")
    else()
      list(APPEND _basin_opts "${_opt}")
    endif()
  endforeach()
  set_directory_properties(PROPERTIES COMPILE_OPTIONS "${_basin_opts}")
endmacro()
