/*
 * fuzz_safetensors - the input bytes are a .safetensors file: open it, walk
 * every tensor (info, find, every data byte), read metadata, and load it as a
 * quantized embedding under "weight" and under the prefix its metadata names,
 * then look rows up. See fuzz_tensorfile.h for the oracles.
 */
#include "fuzz_tensorfile.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fuzz_path(0, "in.safetensors");
    qembed_tensor_file *f = NULL;
    fuzz_write_file(path, data, size);
    exercise_tensor_file(path);
    exercise_qembedding_load(path, NULL);
    /* the prefix a qembed file records in its metadata, when there is one */
    if (qembed_tensor_file_open(path, &f) == QEMBED_OK) {
        const char *prefix = NULL;
        char copy[256];
        if (qembed_tensor_file_metadata(f, "qembed.prefix", &prefix) == QEMBED_OK && prefix != NULL &&
            strlen(prefix) < sizeof copy && strcmp(prefix, "weight") != 0) {
            strcpy(copy, prefix);
            qembed_tensor_file_close(f);
            f = NULL;
            exercise_qembedding_load(path, copy);
        }
        qembed_tensor_file_close(f);
    }
    return 0;
}
