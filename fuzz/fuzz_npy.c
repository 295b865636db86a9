/*
 * fuzz_npy - the input bytes are a .npy file: open it (the reader picks the
 * format by the extension), walk its one tensor "array", read every data
 * byte, and check that loading it as a quantized embedding fails cleanly.
 * See fuzz_tensorfile.h for the oracles.
 */
#include "fuzz_tensorfile.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fuzz_path(0, "in.npy");
    qembed_tensor_file *f = NULL;
    fuzz_write_file(path, data, size);
    exercise_tensor_file(path);
    if (qembed_tensor_file_open(path, &f) == QEMBED_OK) {
        int64_t n = -1, idx = -1;
        FUZZ_ASSERT(qembed_tensor_file_count(f, &n) == QEMBED_OK && n == 1);
        FUZZ_ASSERT(qembed_tensor_file_find(f, "array", &idx) == QEMBED_OK && idx == 0);
        qembed_tensor_file_close(f);
    }
    /* a .npy holds no quantized layer: the load must fail without crashing */
    exercise_qembedding_load(path, NULL);
    return 0;
}
