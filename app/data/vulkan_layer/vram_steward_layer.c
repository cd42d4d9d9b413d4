/* VRAM Steward's Vulkan layer (docs/vulkan-layer.md): an implicit layer that tells the local VRAM Steward
 * engine "this process is creating a Vulkan device on GPU <uuid>" in vkCreateDevice, before the device exists
 * and long before the first allocation, and waits (bounded) for one answer line, so the engine can free its
 * models on that GPU first.
 *
 * Promises: it never fails, crashes or hangs the application. No socket, a stale socket, a refused or slow
 * connection, a service that never answers, a malformed answer: the device is created as if the layer were
 * not there, at most VRAM_STEWARD_LAYER_TIMEOUT_MS (default 750, capped at 5000) later. The manifest's
 * disable_environment (VRAM_STEWARD_LAYER_DISABLE=1) keeps the loader from loading it at all.
 *
 * Dispatch: one table entry per VkInstance and per VkDevice, keyed by the loader's dispatch key (the first
 * pointer-sized word of a dispatchable handle; physical devices share their instance's), in lists guarded by
 * one mutex, so several instances and devices may live at once and be created from any thread. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
#include <vulkan/vk_layer.h>
#include <vulkan/vulkan.h>

#define EXPORT __attribute__((visibility("default")))
#define DEFAULT_TIMEOUT_MS 750
#define MAX_TIMEOUT_MS 5000
#define REPORT_MAX 16384  /* the engine refuses longer lines; the command line is cut to fit */
#define CMDLINE_MAX 8192

/* --- dispatch tables ------------------------------------------------------------------------------ */

typedef struct instance_entry {
    void *key;
    VkInstance instance;
    uint32_t api_version;  /* what the application asked for (1.0 when it said nothing) */
    PFN_vkGetInstanceProcAddr next_gipa;
    PFN_vkDestroyInstance next_destroy;
    struct instance_entry *next;
} instance_entry;

typedef struct device_entry {
    void *key;
    PFN_vkGetDeviceProcAddr next_gdpa;
    PFN_vkDestroyDevice next_destroy;
    struct device_entry *next;
} device_entry;

static pthread_mutex_t tables_lock = PTHREAD_MUTEX_INITIALIZER;
static instance_entry *instances;
static device_entry *devices;

static void *dispatch_key(const void *handle) { return handle ? *(void *const *)handle : NULL; }

static instance_entry *find_instance(void *key) { /* call with tables_lock held */
    for (instance_entry *e = instances; e; e = e->next)
        if (e->key == key) return e;
    return NULL;
}

static device_entry *find_device(void *key) { /* call with tables_lock held */
    for (device_entry *e = devices; e; e = e->next)
        if (e->key == key) return e;
    return NULL;
}

/* A copy of the instance entry for this dispatchable handle (an instance or one of its physical devices). */
static int instance_for(const void *handle, instance_entry *out) {
    pthread_mutex_lock(&tables_lock);
    instance_entry *e = find_instance(dispatch_key(handle));
    if (e) *out = *e;
    pthread_mutex_unlock(&tables_lock);
    return e != NULL;
}

/* --- the report ------------------------------------------------------------------------------------ */

typedef struct {
    char *buf;
    size_t len, cap;
} text;

static void put_raw(text *t, const char *s, size_t n) {
    if (t->len + n >= t->cap) n = t->cap - t->len - 1;
    memcpy(t->buf + t->len, s, n);
    t->len += n;
    t->buf[t->len] = 0;
}

static void put(text *t, const char *s) { put_raw(t, s, strlen(s)); }

/* A JSON string: quotes, backslashes and control characters escaped; other bytes as they are (the engine
 * decodes UTF-8 with replacement, so a file name in another encoding cannot break the line). */
static void put_json_string(text *t, const char *s, size_t n) {
    put(t, "\"");
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        char esc[8];
        if (c == '"' || c == '\\') {
            esc[0] = '\\'; esc[1] = (char)c; put_raw(t, esc, 2);
        } else if (c < 0x20 || c == 0x7f) {
            snprintf(esc, sizeof esc, "\\u%04x", c); put_raw(t, esc, 6);
        } else {
            put_raw(t, (const char *)&c, 1);
        }
    }
    put(t, "\"");
}

static void put_cmdline(text *t) {
    char args[CMDLINE_MAX];
    size_t n = 0;
    int fd = open("/proc/self/cmdline", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        ssize_t r;
        while (n < sizeof args && (r = read(fd, args + n, sizeof args - n)) > 0) n += (size_t)r;
        close(fd);
    }
    put(t, "[");
    size_t start = 0;
    int first = 1;
    for (size_t i = 0; i < n; i++) {
        if (args[i] == 0) {
            if (!first) put(t, ",");
            put_json_string(t, args + start, i - start);
            first = 0;
            start = i + 1;
        }
    }
    put(t, "]");
}

/* deviceName and, when the instance may call vkGetPhysicalDeviceProperties2 (Vulkan 1.1 instance and
 * device), the UUID formatted as NVML prints it: GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx. */
static void describe_device(const instance_entry *inst, VkPhysicalDevice pd, char *name, size_t name_size,
                            char *uuid, size_t uuid_size) {
    name[0] = uuid[0] = 0;
    PFN_vkGetPhysicalDeviceProperties gp =
        (PFN_vkGetPhysicalDeviceProperties)inst->next_gipa(inst->instance, "vkGetPhysicalDeviceProperties");
    if (!gp) return;
    VkPhysicalDeviceProperties p1;
    memset(&p1, 0, sizeof p1);
    gp(pd, &p1);
    snprintf(name, name_size, "%s", p1.deviceName);
    if (inst->api_version < VK_API_VERSION_1_1 || p1.apiVersion < VK_API_VERSION_1_1) return;
    PFN_vkGetPhysicalDeviceProperties2 gp2 =
        (PFN_vkGetPhysicalDeviceProperties2)inst->next_gipa(inst->instance, "vkGetPhysicalDeviceProperties2");
    if (!gp2) return;
    VkPhysicalDeviceIDProperties id;
    memset(&id, 0, sizeof id);
    id.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_ID_PROPERTIES;
    VkPhysicalDeviceProperties2 p2;
    memset(&p2, 0, sizeof p2);
    p2.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2;
    p2.pNext = &id;
    gp2(pd, &p2);
    char *u = uuid;
    size_t left = uuid_size;
    int n = snprintf(u, left, "GPU-");
    for (unsigned i = 0; i < VK_UUID_SIZE && n > 0 && (size_t)n < left; i++) {
        u += n;
        left -= (size_t)n;
        n = snprintf(u, left, (i == 4 || i == 6 || i == 8 || i == 10) ? "-%02x" : "%02x", id.deviceUUID[i]);
    }
}

/* --- the socket ------------------------------------------------------------------------------------ */

static int64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int timeout_ms(void) {
    const char *v = getenv("VRAM_STEWARD_LAYER_TIMEOUT_MS");
    if (!v || !*v) return DEFAULT_TIMEOUT_MS;
    char *end;
    long ms = strtol(v, &end, 10);
    if (*end || ms < 0) return DEFAULT_TIMEOUT_MS;
    return ms > MAX_TIMEOUT_MS ? MAX_TIMEOUT_MS : (int)ms;
}

static int socket_path(char *out, size_t size) {
    const char *v = getenv("VRAM_STEWARD_LAYER_SOCKET");
    if (v && *v) return snprintf(out, size, "%s", v) < (int)size;
    v = getenv("VRAM_STEWARD_RUNTIME_DIR");
    if (v && *v) return snprintf(out, size, "%s/vulkan.sock", v) < (int)size;
    v = getenv("XDG_RUNTIME_DIR");
    if (v && *v) return snprintf(out, size, "%s/vram-steward/vulkan.sock", v) < (int)size;
    return 0;
}

/* Waits for `events` on fd until the deadline; 1 when ready, 0 otherwise (timeout, error, hang-up only). */
static int wait_for(int fd, short events, int64_t deadline) {
    for (;;) {
        int64_t left = deadline - now_ms();
        if (left <= 0) return 0;
        struct pollfd p = {.fd = fd, .events = events};
        int r = poll(&p, 1, (int)left);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return 0;
        return (p.revents & events) != 0;
    }
}

/* Sends the report and waits for one answer line; every step bounded by one deadline. */
static void report_and_wait(const instance_entry *inst, VkPhysicalDevice pd) {
    int wait_ms = timeout_ms();
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    struct stat st;
    if (wait_ms == 0 || !socket_path(path, sizeof path) || stat(path, &st) != 0 || !S_ISSOCK(st.st_mode))
        return;
    int64_t start = now_ms(), deadline = start + wait_ms;

    char name[VK_MAX_PHYSICAL_DEVICE_NAME_SIZE + 1], uuid[64], exe[4096], number[64];
    describe_device(inst, pd, name, sizeof name, uuid, sizeof uuid);
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    exe[n > 0 ? n : 0] = 0;
    char *buf = malloc(REPORT_MAX);
    if (!buf) return;
    text t = {buf, 0, REPORT_MAX};
    buf[0] = 0;
    snprintf(number, sizeof number, "{\"v\":1,\"pid\":%d,\"timeout_ms\":%d,\"exe\":", (int)getpid(), wait_ms);
    put(&t, number);
    put_json_string(&t, exe, strlen(exe));
    put(&t, ",\"device\":");
    put_json_string(&t, name, strlen(name));
    if (uuid[0]) {
        put(&t, ",\"uuid\":");
        put_json_string(&t, uuid, strlen(uuid));
    }
    snprintf(number, sizeof number, ",\"api_version\":\"%u.%u\",\"cmdline\":", VK_API_VERSION_MAJOR(inst->api_version),
             VK_API_VERSION_MINOR(inst->api_version));
    put(&t, number);
    size_t before_cmdline = t.len;
    put_cmdline(&t);
    if (t.len + 3 >= t.cap) {  /* the command line did not fit: send none rather than a broken line */
        t.len = before_cmdline;
        buf[t.len] = 0;
        put(&t, "[]");
    }
    put(&t, "}\n");

    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) goto out;
    struct sockaddr_un addr;
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    memcpy(addr.sun_path, path, strlen(path) + 1);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        /* EAGAIN: the listener's backlog is full (a Unix socket does not wait); ECONNREFUSED: stale */
        if (errno != EINPROGRESS || !wait_for(fd, POLLOUT, deadline)) goto out;
        int err = 0;
        socklen_t len = sizeof err;
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0) goto out;
    }
    size_t sent = 0;
    while (sent < t.len) {
        ssize_t w = send(fd, buf + sent, t.len - sent, MSG_NOSIGNAL);
        if (w > 0) { sent += (size_t)w; continue; }
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && errno == EAGAIN && wait_for(fd, POLLOUT, deadline)) continue;
        goto out;
    }
    char answer[256];
    size_t got = 0;
    while (got < sizeof answer && wait_for(fd, POLLIN, deadline)) {
        ssize_t r = recv(fd, answer + got, sizeof answer - got, 0);
        if (r < 0 && (errno == EINTR || errno == EAGAIN)) continue;
        if (r <= 0) break;  /* closed: the engine has nothing to say */
        if (memchr(answer + got, '\n', (size_t)r)) break;
        got += (size_t)r;
    }
out:
    if (fd >= 0) close(fd);
    free(buf);
    if (getenv("VRAM_STEWARD_LAYER_DEBUG"))
        fprintf(stderr, "vram-steward layer: %s: waited %lld ms\n", name, (long long)(now_ms() - start));
}

/* --- intercepted entry points ---------------------------------------------------------------------- */

static VKAPI_ATTR VkResult VKAPI_CALL vs_CreateInstance(const VkInstanceCreateInfo *ci,
                                                        const VkAllocationCallbacks *alloc, VkInstance *out) {
    VkLayerInstanceCreateInfo *link = (VkLayerInstanceCreateInfo *)ci->pNext;
    while (link && !(link->sType == VK_STRUCTURE_TYPE_LOADER_INSTANCE_CREATE_INFO &&
                     link->function == VK_LAYER_LINK_INFO))
        link = (VkLayerInstanceCreateInfo *)link->pNext;
    if (!link) return VK_ERROR_INITIALIZATION_FAILED;  /* not called by a loader: nothing to chain to */
    PFN_vkGetInstanceProcAddr gipa = link->u.pLayerInfo->pfnNextGetInstanceProcAddr;
    link->u.pLayerInfo = link->u.pLayerInfo->pNext;
    PFN_vkCreateInstance create = (PFN_vkCreateInstance)gipa(VK_NULL_HANDLE, "vkCreateInstance");
    if (!create) return VK_ERROR_INITIALIZATION_FAILED;
    VkResult r = create(ci, alloc, out);
    if (r != VK_SUCCESS) return r;
    instance_entry *e = calloc(1, sizeof *e);
    if (e) {  /* without memory the instance still works; this layer then just passes calls on */
        e->key = dispatch_key(*out);
        e->instance = *out;
        e->api_version = ci->pApplicationInfo && ci->pApplicationInfo->apiVersion
                             ? ci->pApplicationInfo->apiVersion : VK_API_VERSION_1_0;
        e->next_gipa = gipa;
        e->next_destroy = (PFN_vkDestroyInstance)gipa(*out, "vkDestroyInstance");
        pthread_mutex_lock(&tables_lock);
        e->next = instances;
        instances = e;
        pthread_mutex_unlock(&tables_lock);
    }
    return VK_SUCCESS;
}

static VKAPI_ATTR void VKAPI_CALL vs_DestroyInstance(VkInstance instance, const VkAllocationCallbacks *alloc) {
    if (!instance) return;
    void *key = dispatch_key(instance);
    instance_entry *found = NULL;
    pthread_mutex_lock(&tables_lock);
    for (instance_entry **p = &instances; *p; p = &(*p)->next)
        if ((*p)->key == key) { found = *p; *p = found->next; break; }
    pthread_mutex_unlock(&tables_lock);
    if (!found) return;
    if (found->next_destroy) found->next_destroy(instance, alloc);
    free(found);
}

static VKAPI_ATTR VkResult VKAPI_CALL vs_CreateDevice(VkPhysicalDevice pd, const VkDeviceCreateInfo *ci,
                                                      const VkAllocationCallbacks *alloc, VkDevice *out) {
    VkLayerDeviceCreateInfo *link = (VkLayerDeviceCreateInfo *)ci->pNext;
    while (link && !(link->sType == VK_STRUCTURE_TYPE_LOADER_DEVICE_CREATE_INFO &&
                     link->function == VK_LAYER_LINK_INFO))
        link = (VkLayerDeviceCreateInfo *)link->pNext;
    if (!link) return VK_ERROR_INITIALIZATION_FAILED;
    PFN_vkGetInstanceProcAddr gipa = link->u.pLayerInfo->pfnNextGetInstanceProcAddr;
    PFN_vkGetDeviceProcAddr gdpa = link->u.pLayerInfo->pfnNextGetDeviceProcAddr;
    link->u.pLayerInfo = link->u.pLayerInfo->pNext;
    instance_entry inst;
    int known = instance_for(pd, &inst);
    if (known) report_and_wait(&inst, pd);  /* bounded; every failure inside means "go on" */
    PFN_vkCreateDevice create =
        (PFN_vkCreateDevice)gipa(known ? inst.instance : VK_NULL_HANDLE, "vkCreateDevice");
    if (!create) return VK_ERROR_INITIALIZATION_FAILED;
    VkResult r = create(pd, ci, alloc, out);
    if (r != VK_SUCCESS) return r;
    device_entry *e = calloc(1, sizeof *e);
    if (e) {
        e->key = dispatch_key(*out);
        e->next_gdpa = gdpa;
        e->next_destroy = (PFN_vkDestroyDevice)gdpa(*out, "vkDestroyDevice");
        pthread_mutex_lock(&tables_lock);
        e->next = devices;
        devices = e;
        pthread_mutex_unlock(&tables_lock);
    }
    return VK_SUCCESS;
}

static VKAPI_ATTR void VKAPI_CALL vs_DestroyDevice(VkDevice device, const VkAllocationCallbacks *alloc) {
    if (!device) return;
    void *key = dispatch_key(device);
    device_entry *found = NULL;
    pthread_mutex_lock(&tables_lock);
    for (device_entry **p = &devices; *p; p = &(*p)->next)
        if ((*p)->key == key) { found = *p; *p = found->next; break; }
    pthread_mutex_unlock(&tables_lock);
    if (!found) return;
    if (found->next_destroy) found->next_destroy(device, alloc);
    free(found);
}

EXPORT VKAPI_ATTR PFN_vkVoidFunction VKAPI_CALL vs_GetDeviceProcAddr(VkDevice device, const char *name) {
    if (!strcmp(name, "vkGetDeviceProcAddr")) return (PFN_vkVoidFunction)vs_GetDeviceProcAddr;
    if (!strcmp(name, "vkDestroyDevice")) return (PFN_vkVoidFunction)vs_DestroyDevice;
    if (!device) return NULL;
    PFN_vkGetDeviceProcAddr next = NULL;
    pthread_mutex_lock(&tables_lock);
    device_entry *e = find_device(dispatch_key(device));
    if (e) next = e->next_gdpa;
    pthread_mutex_unlock(&tables_lock);
    return next ? next(device, name) : NULL;
}

EXPORT VKAPI_ATTR PFN_vkVoidFunction VKAPI_CALL vs_GetInstanceProcAddr(VkInstance instance, const char *name) {
    if (!strcmp(name, "vkGetInstanceProcAddr")) return (PFN_vkVoidFunction)vs_GetInstanceProcAddr;
    if (!strcmp(name, "vkCreateInstance")) return (PFN_vkVoidFunction)vs_CreateInstance;
    if (!strcmp(name, "vkDestroyInstance")) return (PFN_vkVoidFunction)vs_DestroyInstance;
    if (!strcmp(name, "vkCreateDevice")) return (PFN_vkVoidFunction)vs_CreateDevice;
    if (!strcmp(name, "vkGetDeviceProcAddr")) return (PFN_vkVoidFunction)vs_GetDeviceProcAddr;
    if (!strcmp(name, "vkDestroyDevice")) return (PFN_vkVoidFunction)vs_DestroyDevice;
    if (!instance) return NULL;
    instance_entry inst;
    return instance_for(instance, &inst) ? inst.next_gipa(instance, name) : NULL;
}
