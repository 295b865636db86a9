/* Internal helpers of qembed's C support target. Not installed, not API:
 * qembed__* symbols are never exported (see qembed.map). */
#ifndef QEMBED_INTERNAL_H
#define QEMBED_INTERNAL_H
#include "qembed.h"

/* Copies `message` (NUL-terminated, truncated to 511 bytes) into the calling
 * thread's error buffer. */
void qembed__set_error(const char *message);

#endif
