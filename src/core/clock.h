/* The one monotonic clock of basin: seconds from an arbitrary origin. */
#ifndef BASIN_CLOCK_H
#define BASIN_CLOCK_H

double basin_clock(void);

#endif
