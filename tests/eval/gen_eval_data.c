/* gen_eval_data DIR: small dataset files (a test split of 60 samples):
 * two that a Fashion-MNIST checkpoint does not fit, DIR/shape.h5 (1x14x14
 * samples) and DIR/classes.h5 (28x28 samples in 7 classes), and one it
 * fits that names no classes, DIR/plain.h5 (28x28 in 10 classes). */
#include "reader/fixtures.h"

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: gen_eval_data DIR\n");
        return 2;
    }
    char path[4200];
    FxSpec s = fx_spec(60, 1, 14, 14);
    s.split = "test";
    snprintf(path, sizeof path, "%s/shape.h5", argv[1]);
    fx_write_dataset_file(path, &s);
    s = fx_spec(60, 1, 28, 28);
    s.split = "test";
    s.classes = 7;
    snprintf(path, sizeof path, "%s/classes.h5", argv[1]);
    fx_write_dataset_file(path, &s);
    s.classes = 10;
    snprintf(path, sizeof path, "%s/plain.h5", argv[1]);
    fx_write_dataset_file(path, &s);
    return 0;
}
