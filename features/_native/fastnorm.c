/* The archive's fast path in C: JSON lines of EKS audit events straight to Arrow column buffers.

   It does what features.events.normalize_json_lines does with msgspec, without a Python object per
   field: each line is parsed by yyjson (strict JSON, UTF-8 checked throughout, unpaired surrogate
   escapes refused), the fields normalisation reads are type-checked exactly as msgspec's typed decoder
   checks them, and accepted rows are appended to column buffers that pyarrow wraps without a copy.
   A line it does not accept (not one object, a field of another JSON type, a duplicated field, no
   auditID or timestamp, a request body rules read, ...) is simply left out of ``positions``: the
   caller sends it through the per-line path, which decides it as it always has. So this file never
   quarantines, repairs or guesses; it only takes the common, well-formed case off Python's hands.

   normalize(lines: list[bytes], body_resources: tuple[bytes, ...])
     -> (positions: bytes of int64, missing_user: int, strings: dict[name, (validity, offsets, data, nulls)],
         groups: (list_offsets, offsets, data), code: (validity, int32 values, nulls), truncated: bytes of bool)

   Validity buffers are Arrow bitmaps; offsets are int32; ``strings`` is keyed by the ROW_SCHEMA
   column names in STRING_COLUMNS below. What each column reads is declared once, in
   features.events.EVENT_COLUMNS; tests/features/test_event_schema.py checks this file against it. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include "yyjson.h"

typedef struct { char *p; size_t len, cap; } Buf;

static int buf_put(Buf *b, const void *src, size_t n)
{
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) { PyErr_NoMemory(); return -1; }
        b->p = p;
        b->cap = cap;
    }
    if (n) memcpy(b->p + b->len, src, n);
    b->len += n;
    return 0;
}

static PyObject *buf_bytes(const Buf *b) { return PyBytes_FromStringAndSize(b->p ? b->p : "", (Py_ssize_t)b->len); }

typedef struct { const char *s; size_t n; } Str; /* s == NULL: null */

/* A string column: int32 offsets, data, one validity byte per row (packed into a bitmap at the end). */
typedef struct { Buf offsets, data, valid; Py_ssize_t nulls; } StrCol;

static int strcol_add(StrCol *c, Str v)
{
    if (v.s && buf_put(&c->data, v.s, v.n) < 0) return -1;
    if (c->data.len > INT32_MAX) { PyErr_SetString(PyExc_OverflowError, "block too large for int32 offsets"); return -1; }
    int32_t end = (int32_t)c->data.len;
    unsigned char valid = v.s != NULL;
    c->nulls += !valid;
    if (buf_put(&c->offsets, &end, sizeof end) < 0) return -1;
    return buf_put(&c->valid, &valid, 1);
}

static PyObject *bitmap(const Buf *bytes_per_row)
{
    size_t n = bytes_per_row->len;
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)((n + 7) / 8));
    if (!out) return NULL;
    unsigned char *bits = (unsigned char *)PyBytes_AS_STRING(out);
    memset(bits, 0, (n + 7) / 8);
    for (size_t i = 0; i < n; i++)
        if (bytes_per_row->p[i]) bits[i >> 3] |= (unsigned char)(1u << (i & 7));
    return out;
}

enum {
    S_TIME, S_RECEIVED, S_AUDIT_ID, S_STAGE, S_LEVEL, S_USER, S_IMPERSONATED, S_SOURCE_IP, S_CLAIMED_IP, S_USER_AGENT,
    S_VERB, S_RESOURCE, S_SUBRESOURCE, S_NAMESPACE, S_NAME, S_API_GROUP, S_DECISION, S_REASON, S_URI, S_ARN,
    S_SESSION, S_KEY, S_POD, N_STRINGS
};
static const char *const STRING_COLUMNS[N_STRINGS] = {
    "time", "received_time", "audit_id", "stage", "level", "user", "impersonated_user", "source_ip", "claimed_ip",
    "user_agent", "verb", "resource", "subresource", "namespace", "name", "api_group", "decision", "authz_reason",
    "request_uri", "arn", "session_name", "access_key_id", "sa_pod_name",
};

/* Field names of each object the decoder reads (the sources declared in features.events.EVENT_COLUMNS). */
typedef struct { const char *text; size_t len; } Name;
#define NAME(text) {text, sizeof(text) - 1}
enum { E_KIND, E_API_VERSION, E_AUDIT_ID, E_STAGE, E_LEVEL, E_URI, E_VERB, E_USER, E_IMPERSONATED, E_SOURCE_IPS,
       E_USER_AGENT, E_OBJECT_REF, E_STATUS, E_STAGE_TS, E_TIMESTAMP, E_RECEIVED_TS, E_P_TIME, E_ANNOTATIONS,
       E_REQUEST_OBJECT, N_EVENT };
static const Name EVENT_FIELDS[N_EVENT] = {
    NAME("kind"), NAME("apiVersion"), NAME("auditID"), NAME("stage"), NAME("level"), NAME("requestURI"),
    NAME("verb"), NAME("user"), NAME("impersonatedUser"), NAME("sourceIPs"), NAME("userAgent"), NAME("objectRef"),
    NAME("responseStatus"), NAME("stageTimestamp"), NAME("timestamp"), NAME("requestReceivedTimestamp"),
    NAME("p_event_time"), NAME("annotations"), NAME("requestObject"),
};
enum { U_USERNAME, U_GROUPS, U_EXTRA, N_USER };
static const Name USER_FIELDS[N_USER] = {NAME("username"), NAME("groups"), NAME("extra")};
enum { X_ARN, X_SESSION, X_KEY, X_POD, N_EXTRA };
static const Name EXTRA_FIELDS[N_EXTRA] = {
    NAME("arn"), NAME("sessionName"), NAME("accessKeyId"), NAME("authentication.kubernetes.io/pod-name")};
enum { R_RESOURCE, R_SUBRESOURCE, R_NAMESPACE, R_NAME, R_API_GROUP, N_REF };
static const Name REF_FIELDS[N_REF] = {
    NAME("resource"), NAME("subresource"), NAME("namespace"), NAME("name"), NAME("apiGroup")};
enum { A_DECISION, A_REASON, A_TRUNCATED, N_ANNOTATIONS };
static const Name ANNOTATION_FIELDS[N_ANNOTATIONS] = {
    NAME("authorization.k8s.io/decision"), NAME("authorization.k8s.io/reason"), NAME("audit.k8s.io/truncated")};
static const Name NAMED_FIELDS[1] = {NAME("username")};
static const Name STATUS_FIELDS[1] = {NAME("code")};

/* The values of ``names`` in object ``obj`` (NULL when absent). 0 if a name occurs twice. */
static int fields(yyjson_val *obj, const Name *names, int count, yyjson_val **out)
{
    for (int i = 0; i < count; i++) out[i] = NULL;
    yyjson_obj_iter it = yyjson_obj_iter_with(obj);
    yyjson_val *key;
    while ((key = yyjson_obj_iter_next(&it))) {
        const char *k = yyjson_get_str(key);
        size_t n = yyjson_get_len(key);
        for (int i = 0; i < count; i++) {
            if (names[i].len == n && memcmp(names[i].text, k, n) == 0) {
                if (out[i]) return 0;
                out[i] = yyjson_obj_iter_get_val(key);
                break;
            }
        }
    }
    return 1;
}

/* ``obj`` as an optional nested object: 1 and its fields, 1 and *present = 0 when absent or null, 0 otherwise. */
static int optional_object(yyjson_val *obj, const Name *names, int count, yyjson_val **out, int *present)
{
    *present = 0;
    for (int i = 0; i < count; i++) out[i] = NULL;
    if (!obj || yyjson_is_null(obj)) return 1;
    if (!yyjson_is_obj(obj)) return 0;
    *present = 1;
    return fields(obj, names, count, out);
}

/* ``str | None``: 0 for any other JSON type. */
static int optional_str(yyjson_val *v, Str *out)
{
    out->s = NULL;
    out->n = 0;
    if (!v || yyjson_is_null(v)) return 1;
    if (!yyjson_is_str(v)) return 0;
    out->s = yyjson_get_str(v);
    out->n = yyjson_get_len(v);
    return 1;
}

/* ``list[str | None] | str | None`` reduced to its first value, as user.extra values are. */
static int first_extra(yyjson_val *v, Str *out)
{
    if (!v || !yyjson_is_arr(v)) return optional_str(v, out);
    size_t i, max;
    yyjson_val *item;
    Str ignored;
    yyjson_arr_foreach(v, i, max, item) {
        if (!optional_str(item, i == 0 ? out : &ignored)) return 0;
    }
    if (max == 0) { out->s = NULL; out->n = 0; }
    return 1;
}

/* ``list[str] | None``: 0 for any other JSON type, or an item of one. */
static int optional_str_list(yyjson_val *v)
{
    if (!v || yyjson_is_null(v)) return 1;
    if (!yyjson_is_arr(v)) return 0;
    size_t i, max;
    yyjson_val *item;
    yyjson_arr_foreach(v, i, max, item) {
        if (!yyjson_is_str(item)) return 0;
    }
    return 1;
}

static int truthy(Str s) { return s.s != NULL && s.n > 0; }

static int starts_with(Str s, const char *prefix)
{
    size_t n = strlen(prefix);
    return s.s && s.n >= n && memcmp(s.s, prefix, n) == 0;
}

static int equals(Str s, const char *text)
{
    size_t n = strlen(text);
    return s.s && s.n == n && memcmp(s.s, text, n) == 0;
}

typedef struct {
    StrCol strings[N_STRINGS];
    Buf list_offsets, group_offsets, group_data; /* groups: list<string>, never null */
    Buf code_values, code_valid;
    Py_ssize_t code_nulls;
    Buf truncated;
    Buf positions;
    long missing_user;
} Columns;

static void columns_free(Columns *c)
{
    for (int i = 0; i < N_STRINGS; i++) {
        free(c->strings[i].offsets.p); free(c->strings[i].data.p); free(c->strings[i].valid.p);
    }
    free(c->list_offsets.p); free(c->group_offsets.p); free(c->group_data.p);
    free(c->code_values.p); free(c->code_valid.p); free(c->truncated.p); free(c->positions.p);
}

static int columns_init(Columns *c)
{
    memset(c, 0, sizeof *c);
    int32_t zero = 0;
    for (int i = 0; i < N_STRINGS; i++)
        if (buf_put(&c->strings[i].offsets, &zero, sizeof zero) < 0) return -1;
    if (buf_put(&c->list_offsets, &zero, sizeof zero) < 0) return -1;
    return buf_put(&c->group_offsets, &zero, sizeof zero);
}

/* orjson, and so the per-line path, refuses JSON nested deeper than 1024; yyjson has no such limit.
   Nesting is at most the number of '{' and '[' in a line, so a line with this many goes per line. */
#define MAX_OPENERS 1000

static int few_openers(const char *text, size_t size)
{
    if (size < 2 * MAX_OPENERS) return 1;
    size_t openers = 0;
    for (size_t i = 0; i < size; i++) openers += (text[i] == '{') | (text[i] == '[');
    return openers < MAX_OPENERS;
}

/* Whether a number yyjson kept as text (YYJSON_READ_BIGNUM_AS_RAW) is an integer: no fraction, no exponent. */
static int integer_text(yyjson_val *v)
{
    const char *text = yyjson_get_raw(v);
    size_t size = yyjson_get_len(v);
    return memchr(text, '.', size) == NULL && memchr(text, 'e', size) == NULL && memchr(text, 'E', size) == NULL;
}

/* One line: 1 if appended, 0 if left to the per-line path, -1 on a Python error. */
static int normalize_line(Columns *c, const char *text, size_t size, PyObject *body_resources)
{
    if (!few_openers(text, size)) return 0;
    yyjson_read_err error;
    /* numbers too large for a double stay text, as msgspec skips them, rather than failing the line */
    yyjson_doc *doc = yyjson_read_opts((char *)text, size, YYJSON_READ_BIGNUM_AS_RAW, NULL, &error);
    if (!doc) return 0;
    int result = 0;
    yyjson_val *root = yyjson_doc_get_root(doc);
    yyjson_val *e[N_EVENT], *u[N_USER], *x[N_EXTRA], *r[N_REF], *a[N_ANNOTATIONS], *imp[1], *status[1];
    int has_user, has_extra, has_ref, has_annotations, has_impersonated, has_status;
    if (!yyjson_is_obj(root) || !fields(root, EVENT_FIELDS, N_EVENT, e)) goto done;
    if (!optional_object(e[E_USER], USER_FIELDS, N_USER, u, &has_user)) goto done;
    if (!optional_object(u[U_EXTRA], EXTRA_FIELDS, N_EXTRA, x, &has_extra)) goto done;
    if (!optional_object(e[E_OBJECT_REF], REF_FIELDS, N_REF, r, &has_ref)) goto done;
    if (!optional_object(e[E_ANNOTATIONS], ANNOTATION_FIELDS, N_ANNOTATIONS, a, &has_annotations)) goto done;
    if (!optional_object(e[E_IMPERSONATED], NAMED_FIELDS, 1, imp, &has_impersonated)) goto done;
    if (!optional_object(e[E_STATUS], STATUS_FIELDS, 1, status, &has_status)) goto done;

    Str kind, api_version, audit_id, stage, level, uri, verb, agent, stage_ts, timestamp, received, p_time;
    Str v[N_STRINGS];
    if (!optional_str(e[E_KIND], &kind) || !optional_str(e[E_API_VERSION], &api_version)
        || !optional_str(e[E_AUDIT_ID], &audit_id) || !optional_str(e[E_STAGE], &stage)
        || !optional_str(e[E_LEVEL], &level) || !optional_str(e[E_URI], &uri) || !optional_str(e[E_VERB], &verb)
        || !optional_str(e[E_USER_AGENT], &agent) || !optional_str(e[E_STAGE_TS], &stage_ts)
        || !optional_str(e[E_TIMESTAMP], &timestamp) || !optional_str(e[E_RECEIVED_TS], &received)
        || !optional_str(e[E_P_TIME], &p_time)
        || !optional_str(u[U_USERNAME], &v[S_USER]) || !optional_str(imp[0], &v[S_IMPERSONATED])
        || !first_extra(x[X_ARN], &v[S_ARN]) || !first_extra(x[X_SESSION], &v[S_SESSION])
        || !first_extra(x[X_KEY], &v[S_KEY]) || !first_extra(x[X_POD], &v[S_POD])
        || !optional_str(r[R_RESOURCE], &v[S_RESOURCE]) || !optional_str(r[R_SUBRESOURCE], &v[S_SUBRESOURCE])
        || !optional_str(r[R_NAMESPACE], &v[S_NAMESPACE]) || !optional_str(r[R_NAME], &v[S_NAME])
        || !optional_str(r[R_API_GROUP], &v[S_API_GROUP])
        || !optional_str(a[A_DECISION], &v[S_DECISION]) || !optional_str(a[A_REASON], &v[S_REASON]))
        goto done;
    Str truncated;
    if (!optional_str(a[A_TRUNCATED], &truncated)) goto done;

    /* the first non-empty of stageTimestamp, timestamp, requestReceivedTimestamp, p_event_time */
    Str time = truthy(stage_ts) ? stage_ts : truthy(timestamp) ? timestamp : truthy(received) ? received : p_time;
    if ((kind.s && !equals(kind, "Event")) || (api_version.s && !starts_with(api_version, "audit.k8s.io/"))
        || !truthy(time) || !truthy(audit_id))
        goto done;
    /* a create with a body but no objectRef.name: the per-line path completes the ref from the body's metadata */
    if (e[E_REQUEST_OBJECT] && equals(verb, "create") && !truthy(v[S_NAME]))
        goto done;
    if (e[E_REQUEST_OBJECT] && v[S_RESOURCE].s) {
        Py_ssize_t count = PyTuple_GET_SIZE(body_resources);
        for (Py_ssize_t i = 0; i < count; i++) {
            PyObject *name = PyTuple_GET_ITEM(body_resources, i);
            if ((size_t)PyBytes_GET_SIZE(name) == v[S_RESOURCE].n
                && memcmp(PyBytes_AS_STRING(name), v[S_RESOURCE].s, v[S_RESOURCE].n) == 0)
                goto done;
        }
    }

    int code_valid = 0;
    int32_t code = 0;
    if (status[0] && !yyjson_is_null(status[0])) {
        if (yyjson_is_uint(status[0])) {
            uint64_t value = yyjson_get_uint(status[0]);
            code_valid = value < 1000;
            code = (int32_t)(code_valid ? value : 0);
        } else if (yyjson_is_sint(status[0])) {
            int64_t value = yyjson_get_sint(status[0]);
            code_valid = value >= 0 && value < 1000;
            code = (int32_t)(code_valid ? value : 0);
        } else if (yyjson_is_raw(status[0]) && integer_text(status[0])) {
            code_valid = 0; /* an integer beyond 64 bits: an int to msgspec too, no valid code; the line is taken */
        } else {
            goto done; /* floats (also beyond a double), booleans: msgspec's int refuses them, the per-line path decides */
        }
    }

    yyjson_val *ips = e[E_SOURCE_IPS], *groups = u[U_GROUPS];
    if (!optional_str_list(ips) || !optional_str_list(groups)) goto done;
    /* sourceIPs: empty strings dropped; the last is the connection address */
    Str first_ip = {NULL, 0}, last_ip = {NULL, 0};
    size_t ip_count = 0;
    if (ips && yyjson_is_arr(ips)) {
        size_t i, max;
        yyjson_val *item;
        yyjson_arr_foreach(ips, i, max, item) {
            if (yyjson_get_len(item) == 0) continue;
            Str ip = {yyjson_get_str(item), yyjson_get_len(item)};
            if (!ip_count) first_ip = ip;
            last_ip = ip;
            ip_count++;
        }
    }

    /* accepted: append the row */
    static const Str RESPONSE_COMPLETE = {"ResponseComplete", 16};
    v[S_TIME] = time;
    v[S_RECEIVED] = received;
    v[S_AUDIT_ID] = audit_id;
    v[S_STAGE] = truthy(stage) ? stage : RESPONSE_COMPLETE;
    v[S_LEVEL] = level;
    v[S_SOURCE_IP] = last_ip;
    if (ip_count > 1) v[S_CLAIMED_IP] = first_ip; else { v[S_CLAIMED_IP].s = NULL; v[S_CLAIMED_IP].n = 0; }
    v[S_USER_AGENT] = agent;
    v[S_VERB] = verb;
    v[S_URI] = uri;
    result = -1;
    for (int i = 0; i < N_STRINGS; i++)
        if (strcol_add(&c->strings[i], v[i]) < 0) goto done;
    if (groups && yyjson_is_arr(groups)) {
        size_t i, max;
        yyjson_val *item;
        yyjson_arr_foreach(groups, i, max, item) {
            if (buf_put(&c->group_data, yyjson_get_str(item), yyjson_get_len(item)) < 0) goto done;
            if (c->group_data.len > INT32_MAX) { PyErr_SetString(PyExc_OverflowError, "block too large"); goto done; }
            int32_t end = (int32_t)c->group_data.len;
            if (buf_put(&c->group_offsets, &end, sizeof end) < 0) goto done;
        }
    }
    int32_t list_end = (int32_t)(c->group_offsets.len / sizeof(int32_t) - 1);
    unsigned char valid = (unsigned char)code_valid, is_truncated = equals(truncated, "true");
    if (buf_put(&c->list_offsets, &list_end, sizeof list_end) < 0 || buf_put(&c->code_values, &code, sizeof code) < 0
        || buf_put(&c->code_valid, &valid, 1) < 0 || buf_put(&c->truncated, &is_truncated, 1) < 0)
        goto done;
    c->code_nulls += !code_valid;
    c->missing_user += !has_user;
    result = 1;
done:
    yyjson_doc_free(doc);
    return result;
}

static PyObject *results(Columns *c)
{
    PyObject *strings = PyDict_New();
    if (!strings) return NULL;
    for (int i = 0; i < N_STRINGS; i++) {
        StrCol *col = &c->strings[i];
        PyObject *item = Py_BuildValue("(NNNn)", bitmap(&col->valid), buf_bytes(&col->offsets), buf_bytes(&col->data),
                                       col->nulls);
        if (!item || PyDict_SetItemString(strings, STRING_COLUMNS[i], item) < 0) {
            Py_XDECREF(item);
            Py_DECREF(strings);
            return NULL;
        }
        Py_DECREF(item);
    }
    return Py_BuildValue("(NlN(NNN)(NNn)N)", buf_bytes(&c->positions), c->missing_user, strings,
                         buf_bytes(&c->list_offsets), buf_bytes(&c->group_offsets), buf_bytes(&c->group_data),
                         bitmap(&c->code_valid), buf_bytes(&c->code_values), c->code_nulls, buf_bytes(&c->truncated));
}

static PyObject *normalize(PyObject *Py_UNUSED(self), PyObject *args)
{
    PyObject *lines, *body_resources;
    if (!PyArg_ParseTuple(args, "O!O!", &PyList_Type, &lines, &PyTuple_Type, &body_resources)) return NULL;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(body_resources); i++)
        if (!PyBytes_Check(PyTuple_GET_ITEM(body_resources, i))) {
            PyErr_SetString(PyExc_TypeError, "body_resources must be a tuple of bytes");
            return NULL;
        }
    Columns c;
    PyObject *out = NULL;
    if (columns_init(&c) < 0) goto finally;
    Py_ssize_t count = PyList_GET_SIZE(lines);
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *line = PyList_GET_ITEM(lines, i);
        if (!PyBytes_Check(line)) continue;
        int accepted = normalize_line(&c, PyBytes_AS_STRING(line), (size_t)PyBytes_GET_SIZE(line), body_resources);
        if (accepted < 0) goto finally;
        if (accepted) {
            int64_t position = i;
            if (buf_put(&c.positions, &position, sizeof position) < 0) goto finally;
        }
    }
    out = results(&c);
finally:
    columns_free(&c);
    return out;
}

static PyMethodDef methods[] = {
    {"normalize", normalize, METH_VARARGS,
     "normalize(lines, body_resources): the accepted lines' positions, missing-user count and column buffers."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "features._fastnorm", NULL, -1, methods};

/* setup.py passes the SHA-256 of the sources it compiled; features.events refuses a module built from other ones. */
#ifndef FASTNORM_SOURCE_SHA256
#define FASTNORM_SOURCE_SHA256 ""
#endif

PyMODINIT_FUNC PyInit__fastnorm(void)
{
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddStringConstant(m, "SOURCE_SHA256", FASTNORM_SOURCE_SHA256) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
