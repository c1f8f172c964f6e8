/* The confusion matrix of basin-eval as a PNG heat map. */
#ifndef BASIN_EVAL_PNG_H
#define BASIN_EVAL_PNG_H

#include <stdint.h>

/* Write counts (classes x classes, rows = true class) to path as an 8-bit
 * grayscale PNG: one square block of pixels per cell, its brightness the
 * cell's share of its row (white: every sample of that class went there).
 * Written to path.tmp, then renamed. BASIN_ERR_USAGE after one line when
 * path cannot be written. */
int eval_png_write(const char *path, const uint64_t *counts, int classes);

#endif
