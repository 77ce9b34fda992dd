/* time.monotonic for the compiled build's metrics (gearmill._accel.monotonic).

   The tally reads the clock once per read batch; from compiled code that call is
   most of what metrics cost a job. This one gives exactly time.monotonic's
   readings (CLOCK_MONOTONIC, converted as CPython does) for less: it is called
   through vectorcall directly (a builtin function goes through CPython's
   per-call bookkeeping), and it writes the reading into the float it returned
   last time when nobody else holds that float any more (the caller unboxed it),
   instead of making a new one per call. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <time.h>

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *last; /* the float returned last, or NULL */
} Clock;

static PyObject *
clock_call(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Clock *c = (Clock *)self;
    struct timespec ts;
    long long ns;
    double d;
    PyObject *last;

    (void)args;
    if (PyVectorcall_NARGS(nargsf) != 0 || kwnames != NULL) {
        PyErr_SetString(PyExc_TypeError, "monotonic() takes no arguments");
        return NULL;
    }
    if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0) {
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    /* as CPython's _PyTime_AsSecondsDouble: whole seconds exactly, else ns / 1e9 */
    ns = (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
    if (ns % 1000000000LL == 0) {
        d = (double)(ns / 1000000000LL);
    }
    else {
        d = (double)ns / 1e9;
    }
    last = c->last;
#ifndef Py_GIL_DISABLED
    /* only this object refers to it: nobody can see it change */
    if (last != NULL && Py_REFCNT(last) == 1 && Py_IS_TYPE(last, &PyFloat_Type)) {
        ((PyFloatObject *)last)->ob_fval = d;
        Py_INCREF(last);
        return last;
    }
#endif
    last = PyFloat_FromDouble(d);
    if (last == NULL) {
        return NULL;
    }
    Py_INCREF(last);
    Py_XSETREF(c->last, last);
    return last;
}

static void
clock_dealloc(PyObject *self)
{
    Py_XDECREF(((Clock *)self)->last);
    Py_TYPE(self)->tp_free(self);
}

static PyTypeObject ClockType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "gearmill._clock.Clock",
    .tp_basicsize = sizeof(Clock),
    .tp_dealloc = clock_dealloc,
    .tp_vectorcall_offset = offsetof(Clock, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "monotonic() -> float: time.monotonic's reading",
};

static int
clock_exec(PyObject *module)
{
    Clock *c;

    if (PyType_Ready(&ClockType) < 0) {
        return -1;
    }
    c = PyObject_New(Clock, &ClockType);
    if (c == NULL) {
        return -1;
    }
    c->vectorcall = clock_call;
    c->last = NULL;
    if (PyModule_AddObject(module, "monotonic", (PyObject *)c) < 0) {
        Py_DECREF(c);
        return -1;
    }
    return 0;
}

static PyModuleDef_Slot clock_slots[] = {
    {Py_mod_exec, clock_exec},
    {0, NULL},
};

static struct PyModuleDef clock_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "gearmill._clock",
    .m_doc = "time.monotonic, cheaper to call from compiled code",
    .m_size = 0,
    .m_slots = clock_slots,
};

PyMODINIT_FUNC
PyInit__clock(void)
{
    return PyModuleDef_Init(&clock_module);
}
