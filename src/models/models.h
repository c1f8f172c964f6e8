/* Models: a network is described by a short spec string, a comma-separated
 * list of items, or by the name of a preset.
 *
 *   fc:N             fully connected, N outputs (flattens its input)
 *   conv:C:K[:S[:P]] 2-D convolution, C output channels, KxK window, stride S
 *                    (default 1), zero padding P (default (K-1)/2: "same"
 *                    size for odd K at stride 1)
 *   pool:K[:S[:P]]   max-pooling over KxK windows, stride S (default K),
 *                    padding P (default 0; padded positions never win)
 *   avgpool:K[:S[:P]] average pooling (padded positions count as zeros)
 *   gap              global average pooling: (C, H, W) -> (C, 1, 1)
 *   bn[:M[:E]]       batch normalization per channel (conv output) or per
 *                    feature (flat output); running-statistics momentum M
 *                    (default 0.1), epsilon E (default 1e-5)
 *   relu             rectified linear unit
 *   dropout:P        inverted dropout, drop probability 0 <= P < 1
 *   flatten          (C, H, W) -> (C*H*W)
 *   res(ITEMS)       a residual block: ITEMS(x) + shortcut(x), where the
 *                    shortcut is x when ITEMS keep its shape, else a 1x1
 *                    conv (stride matching the size change, no bias) + bn
 *   basic:C[:S]      res(conv:C:3:S,bn,relu,conv:C:3,bn),relu
 *   bottleneck:C[:S] res(conv:C:1,bn,relu,conv:C:3:S,bn,relu,conv:4C:1,bn),relu
 *   N*ITEM           ITEM repeated N times (e.g. 3*basic:16)
 *
 * A conv or fc followed directly by bn has no bias. The last layer must be
 * fc:<classes>. Presets:
 *   mlp       flatten,fc:1024,relu,fc:1024,relu,fc:10
 *   cnn       conv:32:5,relu,pool:2,conv:64:5,relu,pool:2,flatten,fc:1024,relu,dropout:0.5,fc:10
 *             (the classic TensorFlow tutorial network)
 *   cnn-small a quarter of cnn's arithmetic
 *   resnet20, resnet56   He et al. 2016's CIFAR networks (3 stages of 3 or 9
 *             basic blocks, 16/32/64 channels, projection shortcuts)
 *   resnet50  the ImageNet ResNet-50 (torchvision's layout), fc:1000
 */
#ifndef BASIN_MODELS_H
#define BASIN_MODELS_H

#include <stddef.h>

#include "core/layers.h"

#define MODEL_MAX_LAYERS 512

typedef struct {
    const char *name;
    const char *spec;
    const char *about;
} ModelPreset;

/* The presets, terminated by an entry whose name is NULL. */
extern const ModelPreset model_presets[];

/* The spec of a preset name, or the string itself when it is not one. */
const char *model_resolve(const char *name_or_spec);

/* Parse a spec (or a preset name) for inputs of shape `in` into at most
 * `cap` layers, blocks expanded (LayerSpec.back names a layer's input). A
 * bad token, or a layer that does not fit its input, gets one clear line
 * naming it and BASIN_ERR_USAGE. */
int model_parse(const char *name_or_spec, Shape in, LayerSpec *out, int cap, int *n);

#endif
