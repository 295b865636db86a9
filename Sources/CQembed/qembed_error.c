/* The calling thread's last error message: the only state qembed keeps in C. */
#include <string.h>
#include "qembed_internal.h"

static _Thread_local char qembed__last_error[512];

void qembed__set_error(const char *message) {
    if (message == NULL) message = "";
    size_t n = strlen(message);
    if (n > sizeof qembed__last_error - 1) n = sizeof qembed__last_error - 1;
    memcpy(qembed__last_error, message, n);
    qembed__last_error[n] = '\0';
}

const char *qembed_last_error(void) { return qembed__last_error; }

void qembed_clear_error(void) { qembed__last_error[0] = '\0'; }
