/* Models: a network is described by a short spec string, a comma-separated
 * list of layers, or by the name of a preset.
 *
 *   fc:N             fully connected, N outputs (flattens its input)
 *   conv:C:K[:S[:P]] 2-D convolution, C output channels, KxK window, stride S
 *                    (default 1), zero padding P (default (K-1)/2: "same"
 *                    size for odd K at stride 1)
 *   pool:K[:S]       max-pooling over KxK windows, stride S (default K)
 *   relu             rectified linear unit
 *   dropout:P        inverted dropout, drop probability 0 <= P < 1
 *   flatten          (C, H, W) -> (C*H*W)
 *
 * The last layer must be fc:<classes>. Presets:
 *   mlp  flatten,fc:1024,relu,fc:1024,relu,fc:10
 *   cnn  conv:32:5,relu,pool:2,conv:64:5,relu,pool:2,flatten,fc:1024,relu,dropout:0.5,fc:10
 *        (the classic TensorFlow tutorial network)
 */
#ifndef BASIN_MODELS_H
#define BASIN_MODELS_H

#include <stddef.h>

#include "core/layers.h"

#define MODEL_MAX_LAYERS 64

typedef struct {
    const char *name;
    const char *spec;
    const char *about;
} ModelPreset;

/* The presets, terminated by an entry whose name is NULL. */
extern const ModelPreset model_presets[];

/* The spec of a preset name, or the string itself when it is not one. */
const char *model_resolve(const char *name_or_spec);

/* Parse a spec (or a preset name) into at most `cap` layers. A bad token gets
 * one clear line naming it and BASIN_ERR_USAGE. */
int model_parse(const char *name_or_spec, LayerSpec *out, int cap, int *n);

#endif
