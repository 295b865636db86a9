/* qtest_dir.h - a scratch directory for the C tests that write files
 * (POSIX: mkdtemp, dirent). Include after qtest.h. */
#ifndef QTEST_DIR_H
#define QTEST_DIR_H

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char qt_dir[256];

/* qt_dir/name in one of 8 rotating buffers: copy it to keep it longer */
static inline const char *qt_path(const char *name) {
    static char buf[8][512];
    static int k = 0;
    k = (k + 1) % 8;
    snprintf(buf[k], sizeof buf[k], "%s/%s", qt_dir, name);
    return buf[k];
}

/* Creates $TMPDIR/qembed-<tag>.XXXXXX (or under /tmp); exits with 2 when it cannot. */
static inline void qt_dir_make(const char *tag) {
    const char *tmp = getenv("TMPDIR");
    snprintf(qt_dir, sizeof qt_dir, "%s/qembed-%s.XXXXXX", tmp && tmp[0] ? tmp : "/tmp", tag);
    if (mkdtemp(qt_dir) == NULL) {
        perror("mkdtemp");
        exit(2);
    }
}

/* Removes the directory and the files in it. */
static inline void qt_dir_remove(void) {
    DIR *d = opendir(qt_dir);
    struct dirent *e;
    if (d == NULL) return;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        unlink(qt_path(e->d_name));
    }
    closedir(d);
    rmdir(qt_dir);
}

#endif /* QTEST_DIR_H */
