//! The PyO3 glue: the `oplog._core` extension module.
//!
//! The only module that uses pyo3. It turns Python operations into envelopes and back, in whole
//! batches, builds `oplog.Operation` objects for decoded queues (calling the catalog's parser for
//! each message), packs PostgreSQL binary arrays, and maps `CodecError` to the exceptions defined
//! in `oplog/errors.py` (one `match`, in `From<CodecError> for PyErr`). It uses no raw FFI.

use std::borrow::Cow;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict, PyList, PyMemoryView, PySlice, PyString, PyTuple, PyType};

use crate::blob;
use crate::chain::{TagInput, TagKey};
use crate::envelope::{Envelope, Format};
use crate::error::CodecError;
use crate::{pgarray, queue};

pyo3::import_exception!(oplog.errors, DecodeError);
pyo3::import_exception!(oplog.errors, InvalidParameterError);
pyo3::import_exception!(oplog.errors, UnknownTypeError);

/// Inputs at least this large are encoded or decoded with the GIL released.
const RELEASE_GIL_AT: usize = 1 << 20;
/// Decoded values at least this large are handed out as memoryview slices of the input instead of
/// copies, so decoding a queue of large messages does not double its memory.
const VIEW_VALUES_AT: usize = 64 << 10;
/// How many distinct str objects (type names, paths) one call remembers.
const STR_CACHE: usize = 64;
/// How many str objects one encode call finds without the shared cache's lock.
const RECENT: usize = 8;

impl From<CodecError> for PyErr {
    fn from(err: CodecError) -> PyErr {
        let message = err.to_string();
        match err {
            CodecError::TruncatedLength { offset, .. }
            | CodecError::FrameOverrun { offset, .. }
            | CodecError::BadVarint { offset }
            | CodecError::BadTag { offset, .. }
            | CodecError::WrongWireType { offset, .. }
            | CodecError::Truncated { offset, .. }
            | CodecError::InvalidUtf8 { offset, .. }
            | CodecError::UnknownOpType { offset, .. } => DecodeError::new_err((message, offset)),
            CodecError::InvalidOperation { .. }
            | CodecError::ArrayTooLong { .. }
            | CodecError::ElementTooLarge { .. } => InvalidParameterError::new_err(message),
        }
    }
}

/// What the decoder needs from the Python side, looked up once per interpreter.
struct Runtime {
    /// `oplog.Operation` (a NamedTuple).
    operation: Py<PyAny>,
    /// `tuple.__new__`, which builds a NamedTuple from a tuple without running Python code.
    tuple_new: Py<PyAny>,
    /// `tuple(oplog.OpType)`, indexed by the wire value.
    op_types: Py<PyTuple>,
    /// `oplog.OperationOptions` and its parser.
    options_class: Py<PyAny>,
    parse_options: Py<PyAny>,
    /// `google.protobuf.message.DecodeError`.
    protobuf_decode_error: Py<PyAny>,
}

static RUNTIME: PyOnceLock<Runtime> = PyOnceLock::new();

fn runtime(py: Python<'_>) -> PyResult<&Runtime> {
    RUNTIME.get_or_try_init(py, || {
        let operation_module = py.import(intern!(py, "oplog.operation"))?;
        let op_type = operation_module.getattr(intern!(py, "OpType"))?;
        let options_class = operation_module.getattr(intern!(py, "OperationOptions"))?;
        let builtins = py.import(intern!(py, "builtins"))?;
        let tuple_type = builtins.getattr(intern!(py, "tuple"))?;
        Ok(Runtime {
            operation: operation_module.getattr(intern!(py, "Operation"))?.unbind(),
            tuple_new: tuple_type.getattr(intern!(py, "__new__"))?.unbind(),
            op_types: tuple_type
                .call1((op_type,))?
                .cast_into::<PyTuple>()?
                .unbind(),
            parse_options: options_class.getattr(intern!(py, "FromString"))?.unbind(),
            options_class: options_class.unbind(),
            protobuf_decode_error: py
                .import(intern!(py, "google.protobuf.message"))?
                .getattr(intern!(py, "DecodeError"))?
                .unbind(),
        })
    })
}

fn format_of(version: &str) -> PyResult<Format> {
    match version {
        "v1" => Ok(Format::V1),
        "v2" => Ok(Format::V2),
        other => Err(InvalidParameterError::new_err(format!(
            "unknown queue format {other:?}: expected \"v1\" or \"v2\""
        ))),
    }
}

fn invalid(index: usize, reason: String) -> PyErr {
    CodecError::InvalidOperation { index, reason }.into()
}

/// `repr(s)` as Python writes it, for messages that name a str the way Python code does.
fn py_repr(py: Python<'_>, s: &str) -> String {
    PyString::new(py, s)
        .repr()
        .map_or_else(|_| format!("{s:?}"), |r| r.to_string())
}

fn type_name_of(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map_or_else(|_| "?".to_owned(), |name| name.to_string())
}

// --- encoding ---------------------------------------------------------------------------------

/// One operation as collected from Python: indexes into the batch's arenas.
struct Collected {
    type_name: usize,
    value: usize,
    op_type: u64,
    field_mask: Range<usize>,
    null_mask: Range<usize>,
    options: Option<usize>,
}

/// UTF-8 copies of the str objects that encoding meets most (type names, paths), shared by
/// every call: under the abi3 API each conversion allocates, and `Queue.add` would otherwise
/// convert the same type name on every call. Each entry holds its str object, so the address
/// it is found by stays that object's.
static STRINGS: PyOnceLock<Mutex<StrCache>> = PyOnceLock::new();

/// Str objects and their UTF-8, at most `STR_CACHE` of them.
type StrCache = Vec<(Py<PyString>, Arc<str>)>;

fn utf8_of(s: &Bound<'_, PyString>) -> PyResult<Arc<str>> {
    let py = s.py();
    let cache = STRINGS.get_or_init(py, || Mutex::new(Vec::with_capacity(STR_CACHE)));
    let ptr = s.as_ptr();
    {
        let known = cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((_, utf8)) = known.iter().find(|(obj, _)| obj.as_ptr() == ptr) {
            return Ok(Arc::clone(utf8));
        }
    }
    // Converted outside the lock: to_cow may run Python code (a str subclass), and so could
    // re-enter this function.
    let utf8: Arc<str> = Arc::from(s.to_cow()?.as_ref());
    let mut known = cache
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if known.len() < STR_CACHE {
        known.push((s.clone().unbind(), Arc::clone(&utf8)));
    }
    Ok(utf8)
}

/// Refuses operation options that are not an `oplog.OperationOptions` (any other message would
/// serialize, and be misread as options later).
fn check_options_class(options: &Bound<'_, PyAny>, index: usize) -> PyResult<()> {
    let class = runtime(options.py())?.options_class.bind(options.py());
    if options.get_type().is(class) {
        return Ok(());
    }
    Err(invalid(
        index,
        format!(
            "options must be an oplog.OperationOptions, not {}",
            type_name_of(options)
        ),
    ))
}

/// The unbound `SerializeToString` of the message classes met, shared by every call: calling
/// it with the message makes no bound method per call, which under the abi3 API is a large part
/// of the cost of the call. Each entry holds its class.
static SERIALIZERS: PyOnceLock<Mutex<SerializerCache>> = PyOnceLock::new();

/// Message classes and their `SerializeToString`, at most `STR_CACHE` of them.
type SerializerCache = Vec<(Py<PyType>, Py<PyAny>)>;

fn serializer_of<'py>(cls: &Bound<'py, PyType>) -> Option<Bound<'py, PyAny>> {
    let py = cls.py();
    let cache = SERIALIZERS.get_or_init(py, || Mutex::new(Vec::with_capacity(STR_CACHE)));
    {
        let known = cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((_, method)) = known.iter().find(|(c, _)| c.bind(py).is(cls)) {
            return Some(method.bind(py).clone());
        }
    }
    // Looked up outside the lock: a class's __getattr__ may run Python code.
    let method = cls.getattr(intern!(py, "SerializeToString")).ok()?;
    let mut known = cache
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if known.len() < STR_CACHE {
        known.push((cls.clone().unbind(), method.clone().unbind()));
    }
    Some(method)
}

/// `obj.SerializeToString()` through `method` (its class's, unbound) when there is one, with a
/// clear error when `obj` is not a protobuf message.
fn serialize<'py>(
    obj: &Bound<'py, PyAny>,
    method: Option<Bound<'py, PyAny>>,
    index: usize,
    what: &str,
) -> PyResult<Bound<'py, PyBytes>> {
    let py = obj.py();
    let name = intern!(py, "SerializeToString");
    let not_a_message = || {
        let kind = if obj.is_instance_of::<PyType>() {
            format!(
                "the class {}",
                obj.str().map_or_else(|_| "?".into(), |s| s.to_string())
            )
        } else {
            type_name_of(obj)
        };
        invalid(
            index,
            format!("{what} must be a protobuf message, not {kind}"),
        )
    };
    if obj.is_instance_of::<PyType>() {
        return Err(not_a_message());
    }
    let out = match method {
        Some(method) => method.call1((obj,)),
        None => obj.call_method0(name),
    }
    .map_err(|err| {
        if obj.hasattr(name).unwrap_or(false) {
            err // raised by the message's own SerializeToString
        } else {
            not_a_message()
        }
    })?;
    out.cast_into::<PyBytes>().map_err(|e| {
        invalid(
            index,
            format!(
                "{what}.SerializeToString() returned {}",
                type_name_of(e.into_inner().as_any())
            ),
        )
    })
}

/// The UTF-8 of each str of a field-mask or null-paths argument (a sequence of str).
fn path_list(obj: &Bound<'_, PyAny>, index: usize, what: &str) -> PyResult<Vec<Arc<str>>> {
    let not_paths = || invalid(index, format!("{what} must be a sequence of str"));
    let utf8 = |item: &Bound<'_, PyAny>| -> PyResult<Arc<str>> {
        let s = item.cast::<PyString>().map_err(|_| not_paths())?;
        utf8_of(s).map_err(|_| {
            invalid(
                index,
                format!("{what} is not valid UTF-8 (a lone surrogate?)"),
            )
        })
    };
    if let Ok(tuple) = obj.cast::<PyTuple>() {
        return tuple.iter().map(|item| utf8(&item)).collect();
    }
    if obj.is_instance_of::<PyString>() {
        return Err(not_paths());
    }
    obj.try_iter()
        .map_err(|_| not_paths())?
        .map(|item| utf8(&item?))
        .collect()
}

/// The Python data of one encode call, kept alive (and converted to UTF-8 once per distinct str
/// object) until the envelopes that borrow from it are encoded.
#[derive(Default)]
struct Batch<'py> {
    /// UTF-8 of every str used; `paths` and `Collected` index into it.
    strings: Vec<Arc<str>>,
    /// The str objects this call met first (held, so their addresses stay theirs), with their
    /// index in `strings`: most batches repeat a few names, found here without a lock.
    recent: Vec<(Bound<'py, PyString>, usize)>,
    /// `SerializeToString` of each message class met, unbound.
    serializers: Vec<(Bound<'py, PyType>, Bound<'py, PyAny>)>,
    /// Serialized messages and options.
    blobs: Vec<Bound<'py, PyBytes>>,
    paths: Vec<usize>,
    ops: Vec<Collected>,
}

impl<'py> Batch<'py> {
    /// The arena index of `s`'s UTF-8; a str that has none (a lone surrogate) is an invalid
    /// `what` of operation `index`.
    fn string(&mut self, s: &Bound<'py, PyString>, index: usize, what: &str) -> PyResult<usize> {
        if let Some((_, at)) = self.recent.iter().find(|(known, _)| known.is(s)) {
            return Ok(*at);
        }
        let utf8 = utf8_of(s).map_err(|_| {
            invalid(
                index,
                format!("{what} is not valid UTF-8 (a lone surrogate?)"),
            )
        })?;
        // Consecutive operations usually repeat the previous strings.
        let at = match self
            .strings
            .iter()
            .position(|known| Arc::ptr_eq(known, &utf8))
        {
            Some(at) => at,
            None => {
                self.strings.push(utf8);
                self.strings.len() - 1
            }
        };
        if self.recent.len() < RECENT {
            self.recent.push((s.clone(), at));
        }
        Ok(at)
    }

    fn str_field(&mut self, obj: &Bound<'py, PyAny>, index: usize, what: &str) -> PyResult<usize> {
        let s = obj.cast::<PyString>().map_err(|_| {
            invalid(
                index,
                format!("{what} must be str, not {}", type_name_of(obj)),
            )
        })?;
        self.string(s, index, what)
    }

    /// `obj.SerializeToString()` (see [`serialize`]), kept alive in `blobs`.
    fn serialize(&mut self, obj: &Bound<'py, PyAny>, index: usize, what: &str) -> PyResult<usize> {
        let cls = obj.get_type();
        let method = match self.serializers.iter().find(|(known, _)| known.is(&cls)) {
            Some((_, method)) => Some(method.clone()),
            None => serializer_of(&cls).inspect(|method| {
                self.serializers.push((cls, method.clone()));
            }),
        };
        let bytes = serialize(obj, method, index, what)?;
        self.blobs.push(bytes);
        Ok(self.blobs.len() - 1)
    }

    fn paths(
        &mut self,
        obj: &Bound<'py, PyAny>,
        index: usize,
        what: &str,
    ) -> PyResult<Range<usize>> {
        let start = self.paths.len();
        let not_paths = || invalid(index, format!("{what} must be a sequence of str"));
        if let Ok(tuple) = obj.cast::<PyTuple>() {
            for item in tuple.iter() {
                let s = item.cast::<PyString>().map_err(|_| not_paths())?;
                let at = self.string(s, index, what)?;
                self.paths.push(at);
            }
        } else if obj.is_instance_of::<PyString>() {
            return Err(not_paths());
        } else {
            for item in obj.try_iter().map_err(|_| not_paths())? {
                let item = item?;
                let s = item.cast::<PyString>().map_err(|_| not_paths())?;
                let at = self.string(s, index, what)?;
                self.paths.push(at);
            }
        }
        Ok(start..self.paths.len())
    }

    /// Collects one operation from its parts.
    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        index: usize,
        message: &Bound<'py, PyAny>,
        type_name: &Bound<'py, PyAny>,
        op_type: &Bound<'py, PyAny>,
        field_mask: &Bound<'py, PyAny>,
        null_paths: &Bound<'py, PyAny>,
        options: &Bound<'py, PyAny>,
    ) -> PyResult<()> {
        let value = self.serialize(message, index, "message")?;
        let type_name = self.str_field(type_name, index, "type name")?;
        let op_type = op_type
            .extract::<u64>()
            .map_err(|_| invalid(index, "operation type must be an oplog.OpType".to_owned()))?;
        let field_mask = self.paths(field_mask, index, "field_mask")?;
        let null_mask = self.paths(null_paths, index, "null_paths")?;
        let options = if options.is_none() {
            None
        } else {
            check_options_class(options, index)?;
            Some(self.serialize(options, index, "options")?)
        };
        self.ops.push(Collected {
            type_name,
            value,
            op_type,
            field_mask,
            null_mask,
            options,
        });
        Ok(())
    }

    /// Collects one `oplog.Operation` (any 6-tuple).
    fn push_operation(&mut self, item: &Bound<'py, PyAny>, index: usize) -> PyResult<()> {
        let fields = item
            .cast::<PyTuple>()
            .ok()
            .filter(|t| t.len() == 6)
            .ok_or_else(|| {
                invalid(
                    index,
                    format!("expected an oplog.Operation, not {}", type_name_of(item)),
                )
            })?;
        self.push(
            index,
            &*fields.get_borrowed_item(0)?,
            &*fields.get_borrowed_item(1)?,
            &*fields.get_borrowed_item(2)?,
            &*fields.get_borrowed_item(3)?,
            &*fields.get_borrowed_item(4)?,
            &*fields.get_borrowed_item(5)?,
        )
    }

    /// Appends the collected operations to `out` as queue frames; on error (an invalid
    /// operation) nothing is appended.
    fn encode_into(&self, py: Python<'py>, format: Format, out: &mut Vec<u8>) -> PyResult<()> {
        let strings = &self.strings;
        let path_strs = |range: &Range<usize>| -> Vec<&str> {
            self.paths[range.clone()]
                .iter()
                .map(|at| strings[*at].as_ref())
                .collect()
        };
        let envelopes: Vec<Envelope<'_>> = self
            .ops
            .iter()
            .map(|op| Envelope {
                type_name: strings[op.type_name].as_ref(),
                value: self.blobs[op.value].as_bytes(),
                op_type: op.op_type,
                field_mask: path_strs(&op.field_mask),
                null_mask: path_strs(&op.null_mask),
                options: op
                    .options
                    .map(|at| Cow::Borrowed(self.blobs[at].as_bytes())),
            })
            .collect();
        let payload: usize = envelopes.iter().map(|env| env.value.len()).sum();
        if payload >= RELEASE_GIL_AT {
            // Everything borrowed is immutable (bytes objects and strings of this call).
            py.detach(|| queue::encode(&envelopes, format, out))?;
        } else {
            queue::encode(&envelopes, format, out)?;
        }
        Ok(())
    }

    fn collect_all(&mut self, operations: &Bound<'py, PyAny>) -> PyResult<()> {
        if let Ok(list) = operations.cast::<PyList>() {
            for (index, item) in list.iter().enumerate() {
                self.push_operation(&item, index)?;
            }
        } else {
            for (index, item) in operations.try_iter()?.enumerate() {
                self.push_operation(&item?, index)?;
            }
        }
        Ok(())
    }
}

/// Encodes a batch of `oplog.Operation` into queue bytes.
#[pyfunction]
fn encode_operations<'py>(
    py: Python<'py>,
    operations: &Bound<'py, PyAny>,
    version: &str,
) -> PyResult<Bound<'py, PyBytes>> {
    let format = format_of(version)?;
    let mut batch = Batch::default();
    batch.collect_all(operations)?;
    let mut out = Vec::new();
    batch.encode_into(py, format, &mut out)?;
    Ok(PyBytes::new(py, &out))
}

/// The encoding side of a queue: operations appended one by one or in batches to a buffer,
/// taken out as bytes. Each call validates what it is given and appends all of it or nothing.
#[pyclass(module = "oplog._core")]
struct QueueWriter {
    format: Format,
    buf: Vec<u8>,
}

#[pymethods]
impl QueueWriter {
    #[new]
    fn new(version: &str) -> PyResult<Self> {
        Ok(QueueWriter {
            format: format_of(version)?,
            buf: Vec::new(),
        })
    }

    /// Appends one operation given by its parts.
    #[allow(clippy::too_many_arguments)]
    fn add<'py>(
        &mut self,
        message: &Bound<'py, PyAny>,
        type_name: &Bound<'py, PyAny>,
        op_type: &Bound<'py, PyAny>,
        field_mask: &Bound<'py, PyAny>,
        null_paths: &Bound<'py, PyAny>,
        options: &Bound<'py, PyAny>,
    ) -> PyResult<()> {
        // One operation: no batch arenas, nothing allocated for empty paths.
        let value = serialize(message, serializer_of(&message.get_type()), 0, "message")?;
        let name = type_name.cast::<PyString>().map_err(|_| {
            invalid(
                0,
                format!("type name must be str, not {}", type_name_of(type_name)),
            )
        })?;
        let name = utf8_of(name)
            .map_err(|_| invalid(0, "type name is not valid UTF-8 (a lone surrogate?)".into()))?;
        let op_type = op_type
            .extract::<u64>()
            .map_err(|_| invalid(0, "operation type must be an oplog.OpType".to_owned()))?;
        let mask = path_list(field_mask, 0, "field_mask")?;
        let nulls = path_list(null_paths, 0, "null_paths")?;
        let options = if options.is_none() {
            None
        } else {
            check_options_class(options, 0)?;
            Some(serialize(options, None, 0, "options")?)
        };
        let envelope = Envelope {
            type_name: &name,
            value: value.as_bytes(),
            op_type,
            field_mask: mask.iter().map(AsRef::as_ref).collect(),
            null_mask: nulls.iter().map(AsRef::as_ref).collect(),
            options: options.as_ref().map(|o| Cow::Borrowed(o.as_bytes())),
        };
        Ok(queue::encode(
            std::slice::from_ref(&envelope),
            self.format,
            &mut self.buf,
        )?)
    }

    /// Appends a batch of `oplog.Operation`.
    fn extend<'py>(&mut self, py: Python<'py>, operations: &Bound<'py, PyAny>) -> PyResult<()> {
        let mut batch = Batch::default();
        batch.collect_all(operations)?;
        batch.encode_into(py, self.format, &mut self.buf)
    }

    /// The bytes appended so far; the buffer is emptied.
    fn take<'py>(&mut self, py: Python<'py>) -> Bound<'py, PyBytes> {
        let out = PyBytes::new(py, &self.buf);
        self.buf.clear();
        out
    }

    fn __len__(&self) -> usize {
        self.buf.len()
    }
}

// --- decoding ---------------------------------------------------------------------------------

/// Builds Python values for decoded envelopes, sharing one str object per distinct type name or
/// path (they repeat across a queue).
struct Builder<'a, 'py> {
    py: Python<'py>,
    data: &'a Bound<'py, PyBytes>,
    view: Option<Bound<'py, PyMemoryView>>,
    names: Vec<(&'a str, Bound<'py, PyString>)>,
    empty: Bound<'py, PyTuple>,
}

impl<'a, 'py> Builder<'a, 'py> {
    fn new(data: &'a Bound<'py, PyBytes>) -> Self {
        let py = data.py();
        Builder {
            py,
            data,
            view: None,
            names: Vec::new(),
            empty: PyTuple::empty(py),
        }
    }

    fn intern(&mut self, s: &'a str) -> Bound<'py, PyString> {
        if let Some((_, obj)) = self.names.iter().find(|(n, _)| *n == s) {
            return obj.clone();
        }
        let obj = PyString::new(self.py, s);
        if self.names.len() < STR_CACHE {
            self.names.push((s, obj.clone()));
        }
        obj
    }

    /// A decoded value: a copy, or for a large one a memoryview slice of the input.
    fn value(&mut self, value: &'a [u8]) -> PyResult<Bound<'py, PyAny>> {
        if value.len() < VIEW_VALUES_AT {
            return Ok(PyBytes::new(self.py, value).into_any());
        }
        let view = match &self.view {
            Some(view) => view.clone(),
            None => {
                let view = PyMemoryView::from(self.data.as_any())?;
                self.view = Some(view.clone());
                view
            }
        };
        // `value` is a sub-slice of `data`, so its start is an offset into the input.
        let start = value.as_ptr() as usize - self.data.as_bytes().as_ptr() as usize;
        let slice = PySlice::new(self.py, start as isize, (start + value.len()) as isize, 1);
        view.get_item(slice)
    }

    fn paths(&mut self, paths: &[&'a str]) -> PyResult<Bound<'py, PyTuple>> {
        if paths.is_empty() {
            return Ok(self.empty.clone());
        }
        let items: Vec<Bound<'py, PyString>> = paths.iter().map(|p| self.intern(p)).collect();
        PyTuple::new(self.py, items)
    }

    fn options(&self, env: &Envelope<'a>) -> Option<Bound<'py, PyBytes>> {
        env.options
            .as_ref()
            .map(|options| PyBytes::new(self.py, options))
    }
}

/// Unframes `data` from `start` (up to `limit` frames), with the GIL released for a large input.
fn unframe<'a>(
    py: Python<'_>,
    bytes: &'a [u8],
    start: usize,
    limit: Option<usize>,
) -> PyResult<(Vec<queue::Frame<'a>>, usize)> {
    let limit = limit.unwrap_or(usize::MAX);
    if bytes.len() - start.min(bytes.len()) >= RELEASE_GIL_AT {
        // `bytes` is immutable and kept alive by the caller's reference for the whole call.
        Ok(py.detach(|| queue::decode(bytes, start, limit))?)
    } else {
        Ok(queue::decode(bytes, start, limit)?)
    }
}

/// Decodes up to `limit` frames of `data` from byte `start`, without parsing the messages.
///
/// Returns `(operations, end)`: raw operation tuples `(type_name, value, op_type, field_mask,
/// null_paths, options, frame_offset)` and the offset after the last frame decoded.
#[pyfunction]
#[pyo3(signature = (data, start, limit))]
fn decode_operations<'py>(
    py: Python<'py>,
    data: &'py Bound<'py, PyBytes>,
    start: usize,
    limit: Option<usize>,
) -> PyResult<(Bound<'py, PyList>, usize)> {
    let (frames, end) = unframe(py, data.as_bytes(), start, limit)?;
    let mut builder = Builder::new(data);
    let mut out = Vec::with_capacity(frames.len());
    for (offset, env) in &frames {
        let type_name = builder.intern(env.type_name);
        let value = builder.value(env.value)?;
        let field_mask = builder.paths(&env.field_mask)?;
        let null_paths = builder.paths(&env.null_mask)?;
        let options = builder.options(env);
        out.push(PyTuple::new(
            py,
            [
                type_name.into_any(),
                value,
                env.op_type.into_pyobject(py)?.into_any(),
                field_mask.into_any(),
                null_paths.into_any(),
                options.map_or_else(|| py.None().into_bound(py), Bound::into_any),
                offset.into_pyobject(py)?.into_any(),
            ],
        )?);
    }
    Ok((PyList::new(py, out)?, end))
}

/// Decodes up to `limit` frames of `data` from byte `start` into `oplog.Operation` objects,
/// parsing each message with `parsers[type_name]` (a catalog's ``FromString`` per type name).
///
/// The frames are all unframed, and their type names all checked, before the first message is
/// parsed; nothing is returned unless every operation decodes.
#[pyfunction]
#[pyo3(signature = (data, start, limit, parsers))]
fn decode_queue<'py>(
    py: Python<'py>,
    data: &'py Bound<'py, PyBytes>,
    start: usize,
    limit: Option<usize>,
    parsers: &Bound<'py, PyDict>,
) -> PyResult<(Bound<'py, PyList>, usize)> {
    let mut out = Vec::new();
    let end = QueueDecoder::new(py, parsers)?.decode(data, start, limit, &mut out)?;
    Ok((PyList::new(py, out)?, end))
}

/// Decodes whole queues, one per entry of a page, into one list of `oplog.Operation` objects
/// (each queue as :func:`decode_queue` decodes it from its start), parsers looked up once per
/// type name for the page.
///
/// Returns `(operations, decoded)`: the operations of the first `decoded` queues. When that is
/// fewer than all, queue number `decoded` does not decode (the caller decodes it alone to
/// raise its error, naming its entry).
#[pyfunction]
fn decode_queues<'py>(
    py: Python<'py>,
    datas: &Bound<'py, PyList>,
    parsers: &Bound<'py, PyDict>,
) -> PyResult<(Bound<'py, PyList>, usize)> {
    let mut decoder = QueueDecoder::new(py, parsers)?;
    let mut out = Vec::with_capacity(datas.len());
    for (index, item) in datas.iter().enumerate() {
        let before = out.len();
        let decoded = match item.cast::<PyBytes>() {
            Ok(data) => decoder.decode(data, 0, None, &mut out).is_ok(),
            Err(_) => false,
        };
        if !decoded {
            out.truncate(before);
            return Ok((PyList::new(py, out)?, index));
        }
    }
    Ok((PyList::new(py, out)?, datas.len()))
}

/// What decoding queues into `oplog.Operation` objects needs from the runtime, and the parsers
/// it has looked up so far (by type name).
struct QueueDecoder<'py> {
    py: Python<'py>,
    parsers: Bound<'py, PyDict>,
    known: Vec<(String, Bound<'py, PyAny>)>,
    operation: Bound<'py, PyAny>,
    tuple_new: Bound<'py, PyAny>,
    op_types: Bound<'py, PyAny>,
    parse_options: Bound<'py, PyAny>,
    protobuf_error: Bound<'py, PyAny>,
}

impl<'py> QueueDecoder<'py> {
    fn new(py: Python<'py>, parsers: &Bound<'py, PyDict>) -> PyResult<Self> {
        let rt = runtime(py)?;
        Ok(QueueDecoder {
            py,
            parsers: parsers.clone(),
            known: Vec::new(),
            operation: rt.operation.bind(py).clone().into_any(),
            tuple_new: rt.tuple_new.bind(py).clone(),
            op_types: rt.op_types.bind(py).clone().into_any(),
            parse_options: rt.parse_options.bind(py).clone(),
            protobuf_error: rt.protobuf_decode_error.bind(py).clone().into_any(),
        })
    }

    /// Appends the operations of `data`'s frames from `start` (up to `limit`) to `out`; returns
    /// the offset after the last frame. Every frame is unframed and every type name checked before a message is parsed;
    /// on an error, `out` may hold some of `data`'s operations (the caller drops them).
    fn decode(
        &mut self,
        data: &Bound<'py, PyBytes>,
        start: usize,
        limit: Option<usize>,
        out: &mut Vec<Bound<'py, PyAny>>,
    ) -> PyResult<usize> {
        let py = self.py;
        let known = &mut self.known;
        let (frames, end) = unframe(py, data.as_bytes(), start, limit)?;
        // One parser lookup per distinct type name, all before any message is parsed.
        for (_, env) in &frames {
            if known.iter().any(|(name, _)| name == env.type_name) {
                continue;
            }
            match self.parsers.get_item(env.type_name)? {
                Some(parser) => known.push((env.type_name.to_owned(), parser)),
                None => {
                    return Err(UnknownTypeError::new_err(format!(
                        "type name {} is not in the catalog",
                        py_repr(py, env.type_name)
                    )))
                }
            }
        }
        let mut builder = Builder::new(data);
        for (offset, env) in &frames {
            let not_parsed = |err: PyErr| -> PyErr {
                if err.is_instance(py, &self.protobuf_error) {
                    let cause = err.value(py).to_string();
                    DecodeError::new_err((
                        format!(
                            "frame at offset {offset}: its {} message does not parse: {cause}",
                            py_repr(py, env.type_name)
                        ),
                        *offset,
                    ))
                } else {
                    err
                }
            };
            let parse = known
                .iter()
                .find(|(name, _)| name == env.type_name)
                .map(|(_, parse)| parse)
                .expect("every type name was looked up above");
            let message = parse
                .call1((builder.value(env.value)?,))
                .map_err(not_parsed)?;
            let options = match builder.options(env) {
                None => py.None().into_bound(py),
                Some(bytes) => self.parse_options.call1((bytes,)).map_err(not_parsed)?,
            };
            // The decoder accepts op types 0..=MAX_OP_TYPE only, so the index is in range.
            let op_type = self.op_types.get_item(env.op_type as usize)?;
            let fields = PyTuple::new(
                py,
                [
                    message,
                    builder.intern(env.type_name).into_any(),
                    op_type,
                    builder.paths(&env.field_mask)?.into_any(),
                    builder.paths(&env.null_mask)?.into_any(),
                    options,
                ],
            )?;
            out.push(self.tuple_new.call1((&self.operation, fields))?);
        }
        Ok(end)
    }
}

// --- PostgreSQL arrays ------------------------------------------------------------------------

/// Packs a list of str, bytes or None as a PostgreSQL binary `text[]` (or `bytea[]`) payload.
#[pyfunction]
fn pack_array<'py>(
    py: Python<'py>,
    items: &Bound<'py, PyAny>,
    bytea: bool,
) -> PyResult<Bound<'py, PyBytes>> {
    enum Item {
        Null,
        Str(usize),
        Bytes(usize),
    }
    let mut batch = Batch::default();
    let mut collected = Vec::new();
    for (index, item) in items.try_iter()?.enumerate() {
        let item = item?;
        collected.push(if item.is_none() {
            Item::Null
        } else if let Ok(s) = item.cast::<PyString>() {
            Item::Str(batch.string(s, index, "array element")?)
        } else if let Ok(b) = item.cast_into::<PyBytes>() {
            batch.blobs.push(b);
            Item::Bytes(batch.blobs.len() - 1)
        } else {
            return Err(invalid(
                index,
                "array elements are str, bytes or None".to_owned(),
            ));
        });
    }
    let elements: Vec<Option<&[u8]>> = collected
        .iter()
        .map(|item| match item {
            Item::Null => None,
            Item::Str(at) => Some(batch.strings[*at].as_bytes()),
            Item::Bytes(at) => Some(batch.blobs[*at].as_bytes()),
        })
        .collect();
    let oid = if bytea {
        pgarray::BYTEA_OID
    } else {
        pgarray::TEXT_OID
    };
    Ok(PyBytes::new(py, &pgarray::pack_varlena(oid, &elements)?))
}

/// Packs a list of int as a PostgreSQL binary `int8[]` payload.
#[pyfunction]
fn pack_int8_array<'py>(py: Python<'py>, items: Vec<i64>) -> PyResult<Bound<'py, PyBytes>> {
    Ok(PyBytes::new(py, &pgarray::pack_int8(&items)?))
}

/// How [`pack_text_columns`] reads a column's value of a message (`oplog.mapping.text_kind`).
const TEXT_BY_CONVERTER: u8 = 0;
const TEXT_STRING: u8 = 1;
const TEXT_INTEGER: u8 = 2;
const TEXT_BOOL: u8 = 3;
const TEXT_BYTES: u8 = 4;

/// Writes `value` (an attribute of kind `kind`) in PostgreSQL's text input form; false when it
/// is not what the kind expects (a str with a NUL, another type): the converter decides then.
fn put_text(body: &mut Vec<u8>, value: &Bound<'_, PyAny>, kind: u8) -> PyResult<bool> {
    use std::io::Write as _;
    match kind {
        TEXT_STRING => {
            let Ok(s) = value.cast::<PyString>() else {
                return Ok(false);
            };
            let Ok(utf8) = s.to_cow() else {
                return Ok(false);
            };
            if utf8.as_bytes().contains(&0) {
                return Ok(false);
            }
            body.extend_from_slice(utf8.as_bytes());
        }
        TEXT_INTEGER => {
            if !value.is_exact_instance_of::<pyo3::types::PyInt>() {
                return Ok(false);
            }
            if let Ok(v) = value.extract::<i64>() {
                write!(body, "{v}")?;
            } else if let Ok(v) = value.extract::<u64>() {
                write!(body, "{v}")?;
            } else {
                return Ok(false);
            }
        }
        TEXT_BOOL => {
            let Ok(b) = value.cast::<pyo3::types::PyBool>() else {
                return Ok(false);
            };
            body.push(if b.is_true() { b't' } else { b'f' });
        }
        TEXT_BYTES => {
            let Ok(b) = value.cast::<PyBytes>() else {
                return Ok(false);
            };
            const HEX: &[u8; 16] = b"0123456789abcdef";
            body.extend_from_slice(b"\\x");
            for byte in b.as_bytes() {
                body.push(HEX[usize::from(byte >> 4)]);
                body.push(HEX[usize::from(byte & 15)]);
            }
        }
        _ => return Ok(false),
    }
    Ok(true)
}

/// One PostgreSQL binary `text[]` per column: column j holds every message's value of that
/// column in text input form. A column is `(attribute, kind, converter)`; the kinds other than
/// 0 read the attribute and write it here, and `converter(message)` (a str or None) gives the
/// value otherwise, and for any value its kind does not expect, so it decides (or raises).
#[pyfunction]
fn pack_text_columns<'py>(
    py: Python<'py>,
    messages: &Bound<'py, PyList>,
    columns: Vec<(Bound<'py, PyString>, u8, Bound<'py, PyAny>)>,
) -> PyResult<Vec<Bound<'py, PyBytes>>> {
    let rows = messages.len();
    let mut out = Vec::with_capacity(columns.len());
    for (name, kind, converter) in &columns {
        let mut array = pgarray::VarlenaBuilder::new(pgarray::TEXT_OID, rows * 24);
        for (index, msg) in messages.iter().enumerate() {
            array.begin();
            if *kind != TEXT_BY_CONVERTER && put_text(&mut array.body, &msg.getattr(name)?, *kind)?
            {
                array.end()?;
                continue;
            }
            array.restart();
            let value = converter.call1((&msg,))?;
            if value.is_none() {
                array.end_null();
                continue;
            }
            let utf8 = value
                .cast::<PyString>()
                .map_err(|_| {
                    invalid(
                        index,
                        format!(
                            "a column's text is str or None, not {}",
                            type_name_of(&value)
                        ),
                    )
                })?
                .to_cow()
                .map_err(|_| {
                    invalid(
                        index,
                        "a column's text is not valid UTF-8 (a lone surrogate?)".to_owned(),
                    )
                })?;
            array.body.extend_from_slice(utf8.as_bytes());
            array.end()?;
        }
        out.push(PyBytes::new(py, &array.finish()?));
    }
    Ok(out)
}

// --- entry tags -------------------------------------------------------------------------------

fn bytes_at<'py>(
    list: &Bound<'py, PyList>,
    index: usize,
    what: &str,
) -> PyResult<Bound<'py, PyBytes>> {
    list.get_item(index)?
        .cast_into::<PyBytes>()
        .map_err(|_| invalid(index, format!("{what} must be bytes")))
}

fn utf8_at(list: &Bound<'_, PyList>, index: usize, what: &str) -> PyResult<Arc<str>> {
    let item = list.get_item(index)?;
    let s = item
        .cast::<PyString>()
        .map_err(|_| invalid(index, format!("{what} must be str")))?;
    utf8_of(s)
}

/// The per-entry lists a tag is computed from.
struct EntryLists<'a, 'py> {
    key_id: &'a str,
    datas: &'a Bound<'py, PyList>,
    metadata_digests: &'a Bound<'py, PyList>,
}

impl EntryLists<'_, '_> {
    /// The tag of the entry at `index` with sequence `seq` after the tag `prev`.
    fn tag(
        &self,
        tag_key: &TagKey,
        aggregate: &str,
        index: usize,
        seq: u64,
        prev: &[u8],
    ) -> PyResult<[u8; crate::chain::TAG_SIZE]> {
        let data = bytes_at(self.datas, index, "data")?;
        let digest = bytes_at(self.metadata_digests, index, "a metadata digest")?;
        Ok(tag_key.tag(&TagInput {
            aggregate: aggregate.as_bytes(),
            key_id: self.key_id.as_bytes(),
            data: data.as_bytes(),
            metadata_digest: digest.as_bytes(),
            seq,
            prev,
        }))
    }
}

fn check_lengths(lists: &[&Bound<'_, PyList>]) -> PyResult<usize> {
    let size = lists[0].len();
    if lists.iter().any(|list| list.len() != size) {
        return Err(InvalidParameterError::new_err("the lists differ in length"));
    }
    Ok(size)
}

/// Chains new entries onto their aggregates' heads: for each entry in order, its sequence
/// (the head's plus one) and tag (over the head's tag); `heads` (aggregate name -> (sequence,
/// tag)) must hold every aggregate and is advanced in place. Returns (sequences, tags).
#[pyfunction]
fn chain_tags<'py>(
    py: Python<'py>,
    key: &[u8],
    key_id: &str,
    aggregates: &Bound<'py, PyList>,
    datas: &Bound<'py, PyList>,
    metadata_digests: &Bound<'py, PyList>,
    heads: &Bound<'py, PyDict>,
) -> PyResult<(Bound<'py, PyList>, Bound<'py, PyList>)> {
    let size = check_lengths(&[aggregates, datas, metadata_digests])?;
    let tag_key = TagKey::new(key);
    let seqs = PyList::empty(py);
    let tags = PyList::empty(py);
    for index in 0..size {
        let name = aggregates.get_item(index)?;
        let aggregate = utf8_at(aggregates, index, "an aggregate name")?;
        let head = heads.get_item(&name)?.ok_or_else(|| {
            InvalidParameterError::new_err(format!("no chain head for aggregate {aggregate:?}"))
        })?;
        let (seq, prev): (u64, Bound<'py, PyBytes>) = head.extract()?;
        let next = seq + 1;
        let entry = EntryLists {
            key_id,
            datas,
            metadata_digests,
        };
        let tag = entry.tag(&tag_key, &aggregate, index, next, prev.as_bytes())?;
        let tag = PyBytes::new(py, &tag);
        heads.set_item(&name, (next, &tag))?;
        seqs.append(next)?;
        tags.append(tag)?;
    }
    Ok((seqs, tags))
}

/// The tags of stored entries, each from its own sequence and previous tag (for verifying).
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn entry_tags<'py>(
    py: Python<'py>,
    key: &[u8],
    key_id: &str,
    aggregates: &Bound<'py, PyList>,
    datas: &Bound<'py, PyList>,
    metadata_digests: &Bound<'py, PyList>,
    seqs: Vec<u64>,
    prevs: &Bound<'py, PyList>,
) -> PyResult<Bound<'py, PyList>> {
    let size = check_lengths(&[aggregates, datas, metadata_digests, prevs])?;
    if seqs.len() != size {
        return Err(InvalidParameterError::new_err("the lists differ in length"));
    }
    let tag_key = TagKey::new(key);
    let tags = PyList::empty(py);
    for (index, seq) in seqs.into_iter().enumerate() {
        let aggregate = utf8_at(aggregates, index, "an aggregate name")?;
        let prev = bytes_at(prevs, index, "a previous tag")?;
        let entry = EntryLists {
            key_id,
            datas,
            metadata_digests,
        };
        let tag = entry.tag(&tag_key, &aggregate, index, seq, prev.as_bytes())?;
        tags.append(PyBytes::new(py, &tag))?;
    }
    Ok(tags)
}

// --- Encrypted blobs -------------------------------------------------------------------------

/// The plaintext of each blob of a page that is laid out exactly as an `AeadWrapper` with `key`
/// writes its blobs (`key_info_field` after the sealed part, nothing else) and that
/// authenticates; None for every other item (another layout or type, a changed bit), for the
/// caller's protobuf path to read and to say what is wrong.
///
/// Raises `InvalidParameterError` unless `key` is 32 bytes.
#[pyfunction]
fn open_own_blobs<'py>(
    py: Python<'py>,
    key: &[u8],
    key_info_field: &[u8],
    blobs: &Bound<'py, PyList>,
) -> PyResult<Bound<'py, PyList>> {
    let opener = blob::Opener::new(key).ok_or_else(|| {
        InvalidParameterError::new_err(format!(
            "an AES-256 key is {} bytes, not {}",
            blob::KEY_SIZE,
            key.len()
        ))
    })?;
    let mut out = Vec::with_capacity(blobs.len());
    for item in blobs.iter() {
        let sealed = item
            .cast_exact::<PyBytes>()
            .ok()
            .and_then(|bytes| blob::own_sealed(bytes.as_bytes(), key_info_field));
        let plaintext = match sealed.and_then(|s| Some((s, blob::Opener::plaintext_len(s)?))) {
            Some((sealed, len)) => {
                let mut opened = false;
                let bytes = PyBytes::new_with(py, len, |buf| {
                    opened = opener.open_into(sealed, buf);
                    Ok(())
                })?;
                opened.then_some(bytes.into_any())
            }
            None => None,
        };
        out.push(plaintext.unwrap_or_else(|| py.None().into_bound(py)));
    }
    PyList::new(py, out)
}

/// The byte-level core of oplog.
#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(encode_operations, m)?)?;
    m.add_class::<QueueWriter>()?;
    m.add_function(wrap_pyfunction!(decode_operations, m)?)?;
    m.add_function(wrap_pyfunction!(decode_queue, m)?)?;
    m.add_function(wrap_pyfunction!(decode_queues, m)?)?;
    m.add_function(wrap_pyfunction!(pack_array, m)?)?;
    m.add_function(wrap_pyfunction!(pack_int8_array, m)?)?;
    m.add_function(wrap_pyfunction!(pack_text_columns, m)?)?;
    m.add_function(wrap_pyfunction!(chain_tags, m)?)?;
    m.add_function(wrap_pyfunction!(entry_tags, m)?)?;
    m.add_function(wrap_pyfunction!(open_own_blobs, m)?)?;
    Ok(())
}
