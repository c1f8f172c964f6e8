/* The layer table of a network: what a checkpoint stores so that the
 * network can be rebuilt without basin's code (checkpoints/FORMAT.md,
 * "Layer table", specifies the text).
 *
 * One JSON object: the input shape, the class count, the lengths of the
 * parameter and state buffers, and per layer its index, kind, inputs,
 * hyper-parameters, input and output shapes, and for each of its tensors
 * the name (PyTorch's: weight, bias, running_mean, running_var), shape,
 * offset and count in the flat buffer that holds it.
 */
#ifndef BASIN_NET_TABLE_H
#define BASIN_NET_TABLE_H

#include "core/net.h"

/* The version of the table's own layout ("table_version" in the text). */
#define NET_TABLE_VERSION 1

/* The table of net as NUL-terminated UTF-8 JSON text (malloc'd: the caller
 * frees it), or NULL after one line when memory ran out or a layer has a
 * kind this code does not know. */
char *net_layer_table(const Net *net);

#endif
