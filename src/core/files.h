/* Small file-system helpers shared by every module that writes files. */
#ifndef BASIN_FILES_H
#define BASIN_FILES_H

/* mkdir -p: create dir and its parents. One line and BASIN_ERR_USAGE when it
 * cannot be made or is not a directory. */
int basin_make_dirs(const char *dir);
/* basin_make_dirs of the folder that holds path (nothing for a bare name). */
int basin_make_parent_dirs(const char *path);
/* fsync of a folder, so that a rename inside it is durable. */
int basin_fsync_dir(const char *dir);

#endif
