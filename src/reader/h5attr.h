/* Scalar HDF5 attributes, read and written the same way by the data set
 * reader (dataset.c), the importer (import_idx.c) and the checkpoints
 * (checkpoints/): header-only, like h5check.h, so that checkpoints/ needs
 * no reader library. Every HDF5 return code is checked. */
#ifndef BASIN_READER_H5ATTR_H
#define BASIN_READER_H5ATTR_H

#include <hdf5.h>
#include <stdio.h>

#include "core/error.h"
#include "reader/h5check.h"

/* An open scalar attribute: its handle, file type and space. */
typedef struct {
    hid_t attr, type, space;
} H5Attr;

static inline void h5attr_close(H5Attr *a)
{
    if (a->space >= 0) H5Sclose(a->space);
    if (a->type >= 0) H5Tclose(a->type);
    if (a->attr >= 0) H5Aclose(a->attr);
    a->attr = a->type = a->space = H5I_INVALID_HID;
}

/* Open attribute name of obj with its type and space: 0, or 1 when it does
 * not exist, or -1 when HDF5 failed (the call and HDF5's reason in why:
 * the file is damaged). h5attr_close it in every case. */
static inline int h5attr_open(hid_t obj, const char *name, H5Attr *a, char *why, size_t why_len)
{
    char h5[256];
    a->attr = a->type = a->space = H5I_INVALID_HID;
    htri_t exists = H5Aexists(obj, name);
    if (exists < 0) {
        snprintf(why, why_len, "H5Aexists(%s) failed (%s)", name, h5check_reason(h5));
        return -1;
    }
    if (exists == 0) return 1;
    a->attr = H5Aopen(obj, name, H5P_DEFAULT);
    if (a->attr < 0) {
        snprintf(why, why_len, "H5Aopen(%s) failed (%s)", name, h5check_reason(h5));
        return -1;
    }
    a->type = H5Aget_type(a->attr);
    a->space = H5Aget_space(a->attr);
    if (a->type < 0 || a->space < 0) {
        snprintf(why, why_len, "H5Aget_type/H5Aget_space(%s) failed (%s)", name, h5check_reason(h5));
        return -1;
    }
    return 0;
}

/* Write one scalar attribute; BASIN_ERR_RUNTIME after one line naming where
 * (the file) and the attribute. */
static inline int h5attr_write(hid_t obj, const char *where, const char *name, hid_t file_type, hid_t mem_type,
                               const void *value)
{
    int rc = BASIN_OK;
    char h5[256];
    hid_t space = H5Screate(H5S_SCALAR), attr = H5I_INVALID_HID;
    if (space < 0) {
        rc = basin_error(BASIN_ERR_RUNTIME, "%s: H5Screate(scalar) failed: %s", where, h5check_reason(h5));
        goto cleanup;
    }
    attr = H5Acreate2(obj, name, file_type, space, H5P_DEFAULT, H5P_DEFAULT);
    if (attr < 0) {
        rc = basin_error(BASIN_ERR_RUNTIME, "%s: H5Acreate2(%s) failed: %s", where, name, h5check_reason(h5));
        goto cleanup;
    }
    if (H5Awrite(attr, mem_type, value) < 0)
        rc = basin_error(BASIN_ERR_RUNTIME, "%s: H5Awrite(%s) failed: %s", where, name, h5check_reason(h5));

cleanup:
    if (attr >= 0 && H5Aclose(attr) < 0 && !rc)
        rc = basin_error(BASIN_ERR_RUNTIME, "%s: H5Aclose(%s) failed", where, name);
    if (space >= 0) H5Sclose(space);
    return rc;
}

#endif
