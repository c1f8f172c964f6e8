/* gen_data_faults DIR: write the good file and every malformed data file of
 * faults.h into DIR, and print one line per file: name, tab, fault. */
#include "faults.h"

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: gen_data_faults DIR\n");
        return 2;
    }
    char path[4200];
    snprintf(path, sizeof path, "%s/good.h5", argv[1]);
    fq_good(path);
    printf("good\tvalid file (control)\n");
    for (size_t i = 0; i < N_FAULTS; i++) {
        snprintf(path, sizeof path, "%s/%s.h5", argv[1], FAULTS[i].name);
        FAULTS[i].make(path);
        printf("%s\t%s\n", FAULTS[i].name, FAULTS[i].fault);
    }
    return 0;
}
