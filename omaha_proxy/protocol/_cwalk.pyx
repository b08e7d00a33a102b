# cython: language_level=3, boundscheck=False, wraparound=False
"""Compiled walker: turns the tree lxml parsed into the model, reading libxml2's nodes in C.

Why it exists: the decode target is <= 1.6x a bare ``lxml.etree.fromstring`` of the same
request (about 8 µs). Merely walking the lxml tree from Python (``for el in root.iter():
el.items()``) costs 4 µs, so no pure-Python walker can get there. This module walks the
``xmlNode``/``xmlAttr`` structs behind lxml's ``_Element`` instead (lxml's public C API),
and builds the model objects without creating an lxml proxy per element.

The reference implementation is the Python walker in ``omaha_proxy/codec.py``: every
function here mirrors the one of the same name there and must return ``==`` objects and
raise the same ``CodecError`` (``tests/test_codec_compiled.py`` checks both on every sample,
on mutated samples and on generated documents). Only the hot path is compiled: known
elements, attribute values, object creation. Rare paths (unknown elements, ``<data>`` text,
every error) call back into the reference functions with an lxml proxy for the node.

No libxml2 function is called (lxml links its own copy statically): only struct fields are
read, and lxml's C API (imported at run time) does the rest.
"""

from cpython.dict cimport PyDict_Contains, PyDict_SetItem
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.object cimport PyObject, PyTypeObject
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.string cimport strcmp, strlen

from lxml.includes cimport tree
from lxml.includes.etreepublic cimport (
    _Document,
    _Element,
    _getNs,
    _isElement,
    attributeValue,
    elementFactory,
    import_lxml__etree,
)

from omaha_proxy.protocol.model import (
    Ack,
    Action,
    AppRequest,
    AppResponse,
    DayStart,
    Event,
    Hw,
    Manifest,
    Os,
    Package,
    Ping,
    Request,
    Response,
    UpdateCheck,
    UpdateCheckResponse,
    Url,
)

cdef extern from "Python.h":
    PyTypeObject PyBaseObject_Type
    int PyObject_GenericSetDict(object obj, object value, void* context) except -1

import_lxml__etree()


cdef class _Spec:
    """The C side of codec._Spec: one class's attributes as C strings, in the model's order."""

    cdef object cls
    cdef Py_ssize_t n
    cdef const char** xml  # XML attribute names (pointing into self.keep)
    cdef PyObject** field  # field names (owned by self.keep)
    cdef bint* is_int
    cdef list keep
    cdef tuple absent  # fields with a non-None class default: None when absent

    def __cinit__(self, cls, tuple absent):
        attrs = cls._ATTRS
        self.cls = cls
        self.n = len(attrs)
        self.absent = absent
        self.keep = []
        self.xml = <const char**>PyMem_Malloc(self.n * sizeof(char*))
        self.field = <PyObject**>PyMem_Malloc(self.n * sizeof(PyObject*))
        self.is_int = <bint*>PyMem_Malloc(self.n * sizeof(bint))
        if not self.xml or not self.field or not self.is_int:
            raise MemoryError()
        for i, (field, xml, is_int) in enumerate(attrs):
            name = xml.encode()
            self.keep += [name, field]
            self.xml[i] = name
            self.field[i] = <PyObject*>field
            self.is_int[i] = is_int

    def __dealloc__(self):
        PyMem_Free(self.xml)
        PyMem_Free(self.field)
        PyMem_Free(self.is_int)

    cdef inline Py_ssize_t find(self, const char* name, Py_ssize_t start) noexcept:
        # Documents list attributes in (or close to) the model's order, so the search
        # starts after the previous match and wraps around.
        cdef Py_ssize_t k, i
        for k in range(self.n):
            i = start + k
            if i >= self.n:
                i -= self.n
            if strcmp(self.xml[i], name) == 0:
                return i
        return -1


# The reference implementation's functions and the per-class tables, set by bind().
cdef object _ref_attrs, _ref_unknown, _ref_children, _ref_data, _ref_event, _ref_check_root, _ref_attr_name
cdef _Spec _REQUEST, _HW, _OS, _APP_REQUEST, _PING, _UPDATECHECK, _EVENT
cdef _Spec _RESPONSE, _DAYSTART, _APP_RESPONSE, _ACK, _UPDATECHECK_RESPONSE, _URL, _MANIFEST
cdef _Spec _PACKAGE, _ACTION


def bind(*, specs, attrs, unknown, children, data, event, check_root, attr_name):
    """Give the walker the reference functions it defers to, and codec's per-class tables."""
    global _ref_attrs, _ref_unknown, _ref_children, _ref_data, _ref_event, _ref_check_root
    global _ref_attr_name
    global _REQUEST, _HW, _OS, _APP_REQUEST, _PING, _UPDATECHECK, _EVENT
    global _RESPONSE, _DAYSTART, _APP_RESPONSE, _ACK, _UPDATECHECK_RESPONSE, _URL, _MANIFEST
    global _PACKAGE, _ACTION
    _ref_attrs, _ref_unknown, _ref_children, _ref_data = attrs, unknown, children, data
    _ref_event, _ref_check_root, _ref_attr_name = event, check_root, attr_name
    spec = {cls: _Spec(cls, tuple(s.absent)) for cls, s in specs.items()}
    _REQUEST, _HW, _OS, _APP_REQUEST = spec[Request], spec[Hw], spec[Os], spec[AppRequest]
    _PING, _UPDATECHECK, _EVENT = spec[Ping], spec[UpdateCheck], spec[Event]
    _RESPONSE, _DAYSTART, _APP_RESPONSE = spec[Response], spec[DayStart], spec[AppResponse]
    _ACK, _UPDATECHECK_RESPONSE, _URL = spec[Ack], spec[UpdateCheckResponse], spec[Url]
    _MANIFEST, _PACKAGE, _ACTION = spec[Manifest], spec[Package], spec[Action]


# --------------------------------------------------------------------------- node helpers


cdef inline str _str(const tree.xmlChar* s):
    return PyUnicode_DecodeUTF8(<const char*>s, strlen(<const char*>s), NULL)


cdef inline bint _is(tree.xmlNode* c_node, const char* name) noexcept:
    """``child.tag == name``: an element without a namespace (lxml's tag would be "{ns}name")."""
    return (
        c_node.type == tree.XML_ELEMENT_NODE
        and _getNs(c_node) is NULL
        and strcmp(<const char*>c_node.name, name) == 0
    )


cdef inline bint _has_children(tree.xmlNode* c_node) noexcept:
    """``len(el) != 0``: lxml counts elements, comments, PIs and entity references."""
    cdef tree.xmlNode* c = c_node.children
    while c is not NULL:
        if _isElement(c):
            return True
        c = c.next
    return False


cdef inline str _value(tree.xmlNode* c_node, tree.xmlAttr* c_attr):
    # The value is one text node (or none for ""), as in libxml2's own xmlGetNsProp; any
    # other shape (entity references) goes through lxml.
    cdef tree.xmlNode* c_text = c_attr.children
    if c_text is NULL:
        return ""
    if c_text.next is NULL and c_text.type == tree.XML_TEXT_NODE and c_text.content is not NULL:
        return _str(c_text.content)
    return attributeValue(c_node, c_attr)


cdef inline list _add(list items, object item):
    """``items.append(item)``, making the list on first use (most elements have no such child)."""
    if items is None:
        return [item]
    items.append(item)
    return items


cdef inline dict _app_children(dict kw, list events, list data, list unknown):
    """An ``<app>``'s repeated children into its fields (absent ones keep the defaults)."""
    if events:
        kw["events"] = tuple(events)
    if data:
        kw["data"] = tuple(data)
    if unknown:
        kw["unknown"] = tuple(unknown)
    return kw


cdef inline object _make(object cls, dict kw):
    # codec._make: object.__new__(cls), then kw becomes the instance's __dict__ (the frozen
    # dataclass's __setattr__ is bypassed, as there).
    obj = PyBaseObject_Type.tp_new(cls, <PyObject*>(), NULL)
    PyObject_GenericSetDict(obj, kw, NULL)
    return obj


# ------------------------------------------------------------------ walker (mirrors codec)


cdef str _extra_key(tree.xmlAttr* c_attr):
    """An unknown attribute's key: lxml's name ("{ns}name"), then codec's _attr_name rule."""
    cdef const tree.xmlChar* href = _getNs(<tree.xmlNode*>c_attr)
    if href is NULL:
        return _str(c_attr.name)
    return _ref_attr_name("{" + _str(href) + "}" + _str(c_attr.name))


cdef dict _attrs(_Document doc, tree.xmlNode* c_node, _Spec spec):
    cdef dict kw = {}
    cdef list extra = None
    cdef tree.xmlAttr* c_attr = c_node.properties
    cdef Py_ssize_t i, start = 0
    while c_attr is not NULL:
        value = _value(c_node, c_attr)
        i = -1
        if _getNs(<tree.xmlNode*>c_attr) is NULL:
            i = spec.find(<const char*>c_attr.name, start)
        if i < 0:
            if extra is None:
                extra = []
            extra.append((_extra_key(c_attr), value))
        else:
            start = i + 1
            if spec.is_int[i]:
                try:
                    value = int(value)
                except ValueError:
                    # The reference reports the first bad integer in the model's order.
                    return _ref_attrs(elementFactory(doc, c_node), spec.cls)
            PyDict_SetItem(kw, <object>spec.field[i], value)
        c_attr = c_attr.next
    if extra is not None:
        kw["extra"] = tuple(extra)
    for field in spec.absent:
        if not PyDict_Contains(kw, field):
            kw[field] = None
    return kw


cdef object _leaf(_Document doc, tree.xmlNode* c_node, _Spec spec):
    kw = _attrs(doc, c_node, spec)
    if _has_children(c_node):
        kw["unknown"] = _ref_children(elementFactory(doc, c_node))
    return _make(spec.cls, kw)


cdef object _event(_Document doc, tree.xmlNode* c_node):
    kw = _attrs(doc, c_node, _EVENT)
    if "eventtype" not in kw:
        return _ref_event(elementFactory(doc, c_node))  # raises the CodecError
    if _has_children(c_node):
        kw["unknown"] = _ref_children(elementFactory(doc, c_node))
    return _make(Event, kw)


cdef object _app_request(_Document doc, tree.xmlNode* c_node):
    kw = _attrs(doc, c_node, _APP_REQUEST)
    cdef list events = None, data = None, unknown = None
    cdef tree.xmlNode* child = c_node.children
    while child is not NULL:
        if _is(child, b"ping") and "ping" not in kw:
            kw["ping"] = _leaf(doc, child, _PING)
        elif _is(child, b"updatecheck") and "updatecheck" not in kw:
            kw["updatecheck"] = _leaf(doc, child, _UPDATECHECK)
        elif _is(child, b"event"):
            events = _add(events, _event(doc, child))
        elif _is(child, b"data"):
            data = _add(data, _ref_data(elementFactory(doc, child)))
        elif child.type == tree.XML_ELEMENT_NODE:
            unknown = _add(unknown, _ref_unknown(elementFactory(doc, child)))  # includes a repeated <ping>
        child = child.next
    return _make(AppRequest, _app_children(kw, events, data, unknown))


def walk_request(_Element root not None):
    """codec._request, compiled: the Request of a parsed ``<request>`` root element."""
    cdef _Document doc = root._doc
    cdef tree.xmlNode* c_node = root._c_node
    if not _is(c_node, b"request"):
        _ref_check_root(root, "request")  # raises the CodecError
    kw = _attrs(doc, c_node, _REQUEST)
    cdef list apps = [], unknown = None
    cdef tree.xmlNode* child = c_node.children
    while child is not NULL:
        if _is(child, b"app"):
            apps.append(_app_request(doc, child))
        elif _is(child, b"os") and "os" not in kw:
            kw["os"] = _leaf(doc, child, _OS)
        elif _is(child, b"hw") and "hw" not in kw:
            kw["hw"] = _leaf(doc, child, _HW)
        elif child.type == tree.XML_ELEMENT_NODE:
            unknown = _add(unknown, _ref_unknown(elementFactory(doc, child)))
        child = child.next
    kw["apps"] = tuple(apps)
    if unknown:
        kw["unknown"] = tuple(unknown)
    return _make(Request, kw)


cdef bint _has_foreign_child(tree.xmlNode* c_node, const char* item) noexcept:
    cdef tree.xmlNode* child = c_node.children
    while child is not NULL:
        if child.type == tree.XML_ELEMENT_NODE and not _is(child, item):
            return True
        child = child.next
    return False


cdef object _wrapped(_Document doc, tree.xmlNode* c_node, const char* item, _Spec spec, list unknown):
    # A wrapper with attributes or foreign children is kept whole in ``unknown`` (see codec).
    if c_node.properties is not NULL or _has_foreign_child(c_node, item):
        unknown.append(_ref_unknown(elementFactory(doc, c_node)))
        return None
    cdef list items = []
    cdef tree.xmlNode* child = c_node.children
    while child is not NULL:
        if _is(child, item):
            items.append(_leaf(doc, child, spec))
        child = child.next
    return tuple(items)


cdef object _manifest(_Document doc, tree.xmlNode* c_node):
    kw = _attrs(doc, c_node, _MANIFEST)
    cdef list unknown = []
    cdef tree.xmlNode* child = c_node.children
    while child is not NULL:
        if _is(child, b"packages") and "packages" not in kw:
            kw["packages"] = _wrapped(doc, child, b"package", _PACKAGE, unknown)
        elif _is(child, b"actions") and "actions" not in kw:
            kw["actions"] = _wrapped(doc, child, b"action", _ACTION, unknown)
        elif child.type == tree.XML_ELEMENT_NODE:
            unknown.append(_ref_unknown(elementFactory(doc, child)))
        child = child.next
    if unknown:
        kw["unknown"] = tuple(unknown)
    return _make(Manifest, kw)


cdef object _updatecheck_response(_Document doc, tree.xmlNode* c_node):
    kw = _attrs(doc, c_node, _UPDATECHECK_RESPONSE)
    cdef list manifests = None, unknown = []
    cdef tree.xmlNode* child = c_node.children
    while child is not NULL:
        if _is(child, b"urls") and "urls" not in kw:
            kw["urls"] = _wrapped(doc, child, b"url", _URL, unknown)
        elif _is(child, b"manifest"):
            manifests = _add(manifests, _manifest(doc, child))
        elif child.type == tree.XML_ELEMENT_NODE:
            unknown.append(_ref_unknown(elementFactory(doc, child)))
        child = child.next
    if manifests:
        kw["manifests"] = tuple(manifests)
    if unknown:
        kw["unknown"] = tuple(unknown)
    return _make(UpdateCheckResponse, kw)


cdef object _app_response(_Document doc, tree.xmlNode* c_node):
    kw = _attrs(doc, c_node, _APP_RESPONSE)
    cdef list events = None, data = None, unknown = None
    cdef tree.xmlNode* child = c_node.children
    while child is not NULL:
        if _is(child, b"ping") and "ping" not in kw:
            kw["ping"] = _leaf(doc, child, _ACK)
        elif _is(child, b"updatecheck") and "updatecheck" not in kw:
            kw["updatecheck"] = _updatecheck_response(doc, child)
        elif _is(child, b"event"):
            events = _add(events, _leaf(doc, child, _ACK))
        elif _is(child, b"data"):
            data = _add(data, _ref_data(elementFactory(doc, child)))
        elif child.type == tree.XML_ELEMENT_NODE:
            unknown = _add(unknown, _ref_unknown(elementFactory(doc, child)))
        child = child.next
    return _make(AppResponse, _app_children(kw, events, data, unknown))


def walk_response(_Element root not None):
    """codec._response, compiled: the Response of a parsed ``<response>`` root element."""
    cdef _Document doc = root._doc
    cdef tree.xmlNode* c_node = root._c_node
    if not _is(c_node, b"response"):
        _ref_check_root(root, "response")  # raises the CodecError
    kw = _attrs(doc, c_node, _RESPONSE)
    cdef list apps = [], unknown = None
    cdef tree.xmlNode* child = c_node.children
    while child is not NULL:
        if _is(child, b"app"):
            apps.append(_app_response(doc, child))
        elif _is(child, b"daystart") and "daystart" not in kw:
            kw["daystart"] = _leaf(doc, child, _DAYSTART)
        elif child.type == tree.XML_ELEMENT_NODE:
            unknown = _add(unknown, _ref_unknown(elementFactory(doc, child)))
        child = child.next
    kw["apps"] = tuple(apps)
    if unknown:
        kw["unknown"] = tuple(unknown)
    return _make(Response, kw)
