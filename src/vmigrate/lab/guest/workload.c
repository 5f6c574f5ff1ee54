/*
 * vmigrate lab workload: runs as PID 1 (/init) of the lab guest's initramfs.
 *
 * Serial protocol (one line each, "\n" terminated, console = ttyS0):
 *   out: "VMIGRATE workload ws=<MiB> rate=<MiB/s> disk=<0|1>"   once at start
 *   out: "DISK written <blocks>" | "DISK verify ok <blocks>" | "DISK verify bad <block>"
 *        | "DISK error <what>";   "FATAL <why>" then the guest powers off
 *   out: "HB <seq>"  every 10 ms of guest monotonic time, seq = 1, 2, 3, ...
 *   in:  "rate <N>"  -> "RATE <N>";  "verify" -> "DISK verify ...";
 *        "poweroff"  -> powers the guest off;  anything else -> "ERR unknown command"
 *   ACPI power button (QEMU system_powerdown, libvirt virDomainShutdown):
 *        "POWEROFF acpi", then a clean power off;  with vmigrate.acpi=0 the guest keeps
 *        running and says "ACPI ignored" (once per press);  "ACPI error <what>" if the
 *        button cannot be watched.  The button works from the first heartbeat on.
 *
 * Parameters come from /proc/cmdline: vmigrate.ws, vmigrate.rate, vmigrate.disk,
 * vmigrate.seed, vmigrate.diskmb, vmigrate.acpi.  The disk pattern must stay byte-identical
 * to expected_disk_block() / disk_header() in vmigrate/lab/image.py.
 *
 * Build: gcc -static -O2 -Wall -o init workload.c
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <linux/input.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysinfo.h>
#include <sys/sysmacros.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#define BLOCK 4096
#define PAGE 4096
#define NS 1000000000ULL
#define HB_PERIOD_NS 10000000ULL  /* 10 ms heartbeat */
#define TICK_NS 1000000ULL        /* 1 ms dirtying tick */
#define MAX_CATCHUP_NS 50000000ULL /* after a stall, do not burst more than 50 ms of writes */
#define IO_CHUNK 64               /* blocks per O_DIRECT request */
#define MAX_RATE 100000UL          /* MiB/s; keeps the rate arithmetic far from overflow */
#define VERIFY_STEP 16            /* blocks verified per loop pass by the "verify" command */
#define MAX_BUTTONS 4             /* input devices with KEY_POWER that we watch */

static unsigned long p_ws = 64, p_rate = 0, p_disk = 0, p_seed = 1, p_diskmb = 16, p_acpi = 1;

static void say(const char *fmt, ...) {
    char buf[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf - 1, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if (n > (int)sizeof buf - 2) n = sizeof buf - 2;
    buf[n++] = '\n';
    /* One write(2) per line so lines never interleave; retry partial writes. */
    for (int off = 0; off < n;) {
        ssize_t w = write(1, buf + off, n - off);
        if (w < 0) {
            if (errno == EINTR || errno == EAGAIN) continue;
            return;
        }
        off += (int)w;
    }
}

static void power_off(void) {
    sync();
    reboot(RB_POWER_OFF);
}

static void die(const char *why) {
    say("FATAL %s", why);
    power_off(); /* PID 1 must not exit; a powered-off guest is an obvious failure */
    for (;;) pause();
}

static uint64_t mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * NS + (uint64_t)ts.tv_nsec;
}

/* ---- parameters ------------------------------------------------------- */

static void parse_cmdline(void) {
    char buf[4096];
    int fd = open("/proc/cmdline", O_RDONLY);
    if (fd < 0) return;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return;
    buf[n] = 0;
    for (char *save = NULL, *tok = strtok_r(buf, " \n", &save); tok;
         tok = strtok_r(NULL, " \n", &save)) {
        static const struct { const char *key; unsigned long *val; } keys[] = {
            {"vmigrate.ws=", &p_ws},     {"vmigrate.rate=", &p_rate},
            {"vmigrate.disk=", &p_disk}, {"vmigrate.seed=", &p_seed},
            {"vmigrate.diskmb=", &p_diskmb}, {"vmigrate.acpi=", &p_acpi},
        };
        for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
            size_t kl = strlen(keys[i].key);
            if (strncmp(tok, keys[i].key, kl) == 0) *keys[i].val = strtoul(tok + kl, NULL, 10);
        }
    }
    p_seed &= 0xffffffffUL;
    if (p_rate > MAX_RATE) p_rate = MAX_RATE;
}

/* ---- early system setup ------------------------------------------------ */

static void setup_system(void) {
    mount("proc", "/proc", "proc", 0, NULL);
    mount("sysfs", "/sys", "sysfs", 0, NULL);
    mount("devtmpfs", "/dev", "devtmpfs", 0, NULL);
    /* The kernel opens /dev/console for us when the initramfs has the node; if it did not,
     * open it now (devtmpfs provides one) so stdio works. */
    if (fcntl(1, F_GETFD) < 0) {
        int fd = open("/dev/console", O_RDWR | O_NOCTTY);
        if (fd >= 0) {
            dup2(fd, 0);
            dup2(fd, 1);
            dup2(fd, 2);
            if (fd > 2) close(fd);
        }
    }
    signal(SIGPIPE, SIG_IGN);
    /* Raw, no echo: our commands must not be echoed into the heartbeat stream, and output must
     * be exactly "...\n" (no ONLCR "\r\n").  VMIN=0/VTIME=0 makes read() non-blocking without
     * O_NONBLOCK, which would be shared with stdout (same open file) and break writes. */
    struct termios t;
    if (tcgetattr(0, &t) == 0) {
        cfmakeraw(&t);
        t.c_cflag |= CLOCAL; /* ignore modem lines: no hangup whatever the host side does */
        t.c_cc[VMIN] = 0;
        t.c_cc[VTIME] = 0;
        tcsetattr(0, TCSANOW, &t);
    }
}

/* finit_module() every module listed (in dependency order) in /lib/modules/<list>.order;
 * failures are reported as "<tag> error ...". */
static void load_modules(const char *list, const char *tag) {
    char name[256], path[300];
    snprintf(path, sizeof path, "/lib/modules/%s.order", list);
    FILE *f = fopen(path, "r");
    if (!f) {
        say("%s error open %s: %s", tag, path, strerror(errno));
        return;
    }
    while (fgets(name, sizeof name, f)) {
        name[strcspn(name, "\r\n")] = 0;
        if (!name[0]) continue;
        snprintf(path, sizeof path, "/lib/modules/%s", name);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            say("%s error open %s: %s", tag, name, strerror(errno));
            continue;
        }
        if (syscall(SYS_finit_module, fd, "", 0) != 0 && errno != EEXIST)
            say("%s error finit_module %s: %s", tag, name, strerror(errno));
        close(fd);
    }
    fclose(f);
}

/* ---- ACPI power button ------------------------------------------------- */

/* The ACPI button driver (button.ko) turns the power button into an input device that sends
 * KEY_POWER; evdev.ko makes it readable as /dev/input/event<N>.  The kernel has no way to
 * power off on the button by itself (CONFIG_ACPI_TINY_POWER_BUTTON is not set), so we poll. */
static int button_fd[MAX_BUTTONS];
static int n_buttons;

static int has_key_power(int fd) {
    unsigned long keys[KEY_MAX / (8 * sizeof(unsigned long)) + 1] = {0};
    const int bits = 8 * sizeof(unsigned long);
    return ioctl(fd, EVIOCGBIT(EV_KEY, sizeof keys), keys) >= 0 &&
           (keys[KEY_POWER / bits] >> (KEY_POWER % bits) & 1);
}

static void acpi_setup(void) {
    load_modules("acpi", "ACPI");
    DIR *d = opendir("/sys/class/input");
    if (!d) {
        say("ACPI error opendir /sys/class/input: %s", strerror(errno));
        return;
    }
    mkdir("/dev/input", 0755);
    for (struct dirent *e; (e = readdir(d)) && n_buttons < MAX_BUTTONS;) {
        if (strncmp(e->d_name, "event", 5) != 0) continue;
        char path[300], dev[32] = {0};
        snprintf(path, sizeof path, "/dev/input/%s", e->d_name);
        int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
        if (fd < 0 && errno == ENOENT) { /* no devtmpfs: make the node from sysfs */
            snprintf(path, sizeof path, "/sys/class/input/%s/dev", e->d_name);
            unsigned maj, min;
            int sfd = open(path, O_RDONLY | O_CLOEXEC);
            ssize_t n = sfd < 0 ? -1 : read(sfd, dev, sizeof dev - 1);
            if (sfd >= 0) close(sfd);
            snprintf(path, sizeof path, "/dev/input/%s", e->d_name);
            if (n > 0 && sscanf(dev, "%u:%u", &maj, &min) == 2 &&
                mknod(path, S_IFCHR | 0600, makedev(maj, min)) == 0)
                fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
        }
        if (fd < 0) continue;
        if (has_key_power(fd)) button_fd[n_buttons++] = fd;
        else close(fd);
    }
    closedir(d);
    if (n_buttons == 0) say("ACPI error no power button input device");
}

/* Drain one button device; power off (or say we ignore it) on a KEY_POWER press. */
static void button_event(int fd) {
    struct input_event ev[16];
    ssize_t r;
    while ((r = read(fd, ev, sizeof ev)) > 0) {
        for (size_t i = 0; i < (size_t)r / sizeof ev[0]; i++) {
            if (ev[i].type != EV_KEY || ev[i].code != KEY_POWER || ev[i].value != 1) continue;
            if (!p_acpi) {
                say("ACPI ignored");
                continue;
            }
            say("POWEROFF acpi");
            power_off();
        }
    }
}

/* ---- disk pattern ------------------------------------------------------ */

static void hex(char *dst, uint32_t v, int digits) {
    static const char h[] = "0123456789abcdef";
    for (int i = digits - 1; i >= 0; i--, v >>= 4) dst[i] = h[v & 15];
}

/* Block 0: header padded with zeros.  Block i>=1: 64 lines of 64 bytes,
 * "vmigrate seed=%08x block=%08x line=%02x" padded with '.' to 63 bytes, then '\n'. */
static void fill_block(char *b, uint32_t idx) {
    if (idx == 0) {
        memset(b, 0, BLOCK);
        snprintf(b, BLOCK, "VMIGRATE-DISK seed=%lu mb=%lu\n", p_seed, p_diskmb);
        return;
    }
    static const char tmpl[] = "vmigrate seed=00000000 block=00000000 line=00";
    for (int l = 0; l < BLOCK / 64; l++) {
        char *line = b + l * 64;
        memcpy(line, tmpl, sizeof tmpl - 1);
        memset(line + sizeof tmpl - 1, '.', 63 - (sizeof tmpl - 1));
        line[63] = '\n';
        hex(line + 14, (uint32_t)p_seed, 8);
        hex(line + 29, idx, 8);
        hex(line + 43, (uint32_t)l, 2);
    }
}

static int disk_fd = -1;
static uint32_t disk_blocks;
static char *iobuf, *expbuf;

static int disk_io(int write_, uint32_t first, uint32_t n) {
    size_t len = (size_t)n * BLOCK;
    off_t off = (off_t)first * BLOCK;
    for (size_t done = 0; done < len;) {
        ssize_t r = write_ ? pwrite(disk_fd, iobuf + done, len - done, off + done)
                           : pread(disk_fd, iobuf + done, len - done, off + done);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return -1;
        done += (size_t)r;
    }
    return 0;
}

/* Verify blocks [first, first+n); return index of the first bad block or -1. */
static int64_t verify_range(uint32_t first, uint32_t n) {
    if (disk_io(0, first, n) != 0) return first;
    for (uint32_t i = 0; i < n; i++) {
        fill_block(expbuf, first + i);
        if (memcmp(iobuf + (size_t)i * BLOCK, expbuf, BLOCK) != 0) return first + i;
    }
    return -1;
}

static void disk_setup(void) {
    load_modules("disk", "DISK");
    /* virtio_blk probes synchronously, but give devtmpfs a moment anyway. */
    for (int i = 0; i < 500 && access("/dev/vda", F_OK) != 0; i++) {
        char dev[32] = {0};
        int fd = open("/sys/block/vda/dev", O_RDONLY);
        if (fd >= 0) {
            unsigned maj, min;
            if (read(fd, dev, sizeof dev - 1) > 0 && sscanf(dev, "%u:%u", &maj, &min) == 2)
                mknod("/dev/vda", S_IFBLK | 0600, makedev(maj, min));
            close(fd);
        } else {
            usleep(10000);
        }
    }
    disk_fd = open("/dev/vda", O_RDWR | O_DIRECT | O_CLOEXEC);
    if (disk_fd < 0) {
        say("DISK error open /dev/vda: %s", strerror(errno));
        return;
    }
    uint64_t size = 0;
    disk_blocks = (uint32_t)(p_diskmb * (1024 * 1024 / BLOCK));
    if (ioctl(disk_fd, BLKGETSIZE64, &size) != 0 || size < (uint64_t)disk_blocks * BLOCK ||
        disk_blocks == 0) {
        say("DISK error device has %llu bytes, need %lu MiB", (unsigned long long)size, p_diskmb);
        close(disk_fd);
        disk_fd = -1;
        return;
    }
    if (posix_memalign((void **)&iobuf, BLOCK, IO_CHUNK * BLOCK) ||
        posix_memalign((void **)&expbuf, BLOCK, BLOCK))
        die("posix_memalign failed");

    if (verify_range(0, 1) >= 0) {
        /* No (or another) header: write data first, header last, so a torn write never
         * leaves a valid-looking header in front of incomplete data. */
        for (uint32_t b = 1; b < disk_blocks; b += IO_CHUNK) {
            uint32_t n = disk_blocks - b < IO_CHUNK ? disk_blocks - b : IO_CHUNK;
            for (uint32_t i = 0; i < n; i++) fill_block(iobuf + (size_t)i * BLOCK, b + i);
            if (disk_io(1, b, n) != 0) {
                say("DISK error write block %u: %s", b, strerror(errno));
                return;
            }
        }
        fsync(disk_fd);
        fill_block(iobuf, 0);
        if (disk_io(1, 0, 1) != 0 || fsync(disk_fd) != 0) {
            say("DISK error write header: %s", strerror(errno));
            return;
        }
        say("DISK written %u", disk_blocks);
        return;
    }
    for (uint32_t b = 1; b < disk_blocks; b += IO_CHUNK) {
        uint32_t n = disk_blocks - b < IO_CHUNK ? disk_blocks - b : IO_CHUNK;
        int64_t bad = verify_range(b, n);
        if (bad >= 0) {
            say("DISK verify bad %lld", (long long)bad);
            return;
        }
    }
    say("DISK verify ok %u", disk_blocks);
}

/* ---- main loop --------------------------------------------------------- */

int main(void) {
    setup_system();
    parse_cmdline();
    say("VMIGRATE workload ws=%lu rate=%lu disk=%lu", p_ws, p_rate, p_disk ? 1UL : 0UL);
    acpi_setup(); /* before the first heartbeat: once a guest beats, its power button works */

    size_t ws_pages = p_ws * (1024 * 1024 / PAGE);
    struct sysinfo si;
    /* Better a clear message than the OOM killer taking PID 1 (= kernel panic, reboot loop). */
    if (sysinfo(&si) == 0 && p_ws + 16 > (uint64_t)si.freeram * si.mem_unit >> 20) {
        char why[128];
        snprintf(why, sizeof why, "working set %lu MiB does not fit in %lu MiB of free memory",
                 p_ws, (unsigned long)((uint64_t)si.freeram * si.mem_unit >> 20));
        die(why);
    }
    volatile uint64_t *ws = NULL;
    if (ws_pages) {
        void *m = mmap(NULL, ws_pages * PAGE, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (m == MAP_FAILED) die("mmap of the working set failed");
        ws = m;
        /* Non-zero so that migration cannot skip these as zero pages. */
        for (size_t i = 0; i < ws_pages; i++) ws[i * (PAGE / 8)] = i + 1;
    }
    if (p_disk) disk_setup();

    uint64_t seq = 0, value = 0, carry = 0;
    size_t cursor = 0;
    int64_t verify_pos = -1; /* >= 0 while a "verify" command is in progress */
    struct pollfd pfd[1 + MAX_BUTTONS] = {{.fd = 0, .events = POLLIN}};
    for (int i = 0; i < n_buttons; i++) pfd[1 + i] = (struct pollfd){button_fd[i], POLLIN, 0};
    char line[128];
    size_t line_len = 0;
    uint64_t now = mono_ns(), next_hb = now, last_dirty = now;

    for (;;) {
        now = mono_ns();
        if (now >= next_hb) {
            say("HB %llu", (unsigned long long)++seq);
            next_hb += HB_PERIOD_NS;
            if (next_hb <= now) next_hb = now + HB_PERIOD_NS; /* late: no burst of beats */
        }

        /* Dirty rate*256 pages/s; carry keeps the fraction so the average rate is exact. */
        if (p_rate && ws_pages) {
            uint64_t dt = now - last_dirty;
            if (dt > MAX_CATCHUP_NS) dt = MAX_CATCHUP_NS;
            carry += dt * (p_rate * 256);
            uint64_t n = carry / NS;
            carry -= n * NS;
            for (value++; n; n--) {
                ws[cursor * (PAGE / 8)] = value;
                if (++cursor == ws_pages) cursor = 0;
            }
        }
        last_dirty = now;

        if (verify_pos >= 0) {
            uint32_t n = disk_blocks - (uint32_t)verify_pos;
            if (n > VERIFY_STEP) n = VERIFY_STEP;
            int64_t bad = verify_range((uint32_t)verify_pos, n);
            if (bad >= 0) {
                say("DISK verify bad %lld", (long long)bad);
                verify_pos = -1;
            } else if ((verify_pos += n) >= disk_blocks) {
                say("DISK verify ok %u", disk_blocks);
                verify_pos = -1;
            }
        }

        /* Sleep until the next beat, the next dirtying tick, console input or a button. */
        uint64_t wake = next_hb;
        if (p_rate && ws_pages && now + TICK_NS < wake) wake = now + TICK_NS;
        if (verify_pos >= 0) wake = now;
        uint64_t delay = wake > now ? wake - now : 0;
        struct timespec ts = {(time_t)(delay / NS), (long)(delay % NS)};
        if (ppoll(pfd, 1 + n_buttons, &ts, NULL) <= 0) continue;
        for (int i = 1; i <= n_buttons; i++) {
            if (pfd[i].revents & POLLIN) button_event(pfd[i].fd);
            if (pfd[i].revents & (POLLERR | POLLHUP | POLLNVAL)) pfd[i].fd = -1;
        }
        if (pfd[0].revents & (POLLERR | POLLHUP | POLLNVAL))
            pfd[0].fd = -1; /* console input is gone: stop polling it rather than spin */
        if (!(pfd[0].revents & POLLIN)) continue;
        char in[256];
        ssize_t r = read(0, in, sizeof in);
        for (ssize_t i = 0; i < r; i++) {
            char c = in[i];
            if (c != '\n' && c != '\r') {
                if (line_len < sizeof line - 1) line[line_len++] = c;
                continue;
            }
            line[line_len] = 0;
            if (line_len == 0) continue;
            line_len = 0;
            unsigned long v;
            char extra;
            if (strncmp(line, "rate ", 5) == 0 && isdigit((unsigned char)line[5]) &&
                sscanf(line, "rate %lu %c", &v, &extra) == 1 && v <= MAX_RATE) {
                p_rate = v;
                carry = 0;
                say("RATE %lu", p_rate);
            } else if (strcmp(line, "verify") == 0) {
                if (disk_fd < 0) say("DISK error no disk");
                else verify_pos = 0;
            } else if (strcmp(line, "poweroff") == 0) {
                power_off();
            } else {
                say("ERR unknown command");
            }
        }
    }
}
