//! The PyO3 glue: the `oplog._core` extension module.
//!
//! The only module that uses pyo3. It turns Python operations into envelopes and back, in whole
//! batches, and maps `CodecError` to the exceptions defined in `oplog/errors.py`.

use std::os::raw::c_char;

use pyo3::exceptions::PyOverflowError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString, PyTuple};
use pyo3::{ffi, intern, AsPyPointer};

use crate::envelope::{Envelope, Format};
use crate::error::CodecError;
use crate::{pgarray, queue};

pyo3::import_exception!(oplog.errors, DecodeError);
pyo3::import_exception!(oplog.errors, InvalidParameterError);

/// Inputs at least this large are encoded or decoded with the GIL released.
const RELEASE_GIL_AT: usize = 1 << 20;
/// Decoded values at least this large are handed out as memoryview slices of the input instead of
/// copies, so decoding a queue of large messages does not double its memory.
const VIEW_VALUES_AT: usize = 64 << 10;

impl From<CodecError> for PyErr {
    fn from(err: CodecError) -> PyErr {
        match err.offset() {
            Some(offset) => DecodeError::new_err((err.to_string(), offset)),
            None => InvalidParameterError::new_err(err.to_string()),
        }
    }
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

fn type_name_of(obj: &PyAny) -> String {
    obj.get_type()
        .name()
        .map_or_else(|_| "?".to_owned(), str::to_owned)
}

/// `obj.SerializeToString()`, with a clear error when `obj` is not a protobuf message.
fn serialize<'py>(obj: &'py PyAny, index: usize, what: &str) -> PyResult<&'py [u8]> {
    let py = obj.py();
    let method = obj.getattr(intern!(py, "SerializeToString")).map_err(|_| {
        invalid(
            index,
            format!(
                "{what} must be a protobuf message, not {}",
                type_name_of(obj)
            ),
        )
    })?;
    let out = method.call0()?;
    let bytes: &PyBytes = out.downcast().map_err(|_| {
        invalid(
            index,
            format!("{what}.SerializeToString() returned {}", type_name_of(out)),
        )
    })?;
    Ok(bytes.as_bytes())
}

/// Refuses operation options that are not an `oplog.OperationOptions` (any other message would
/// serialize, and be misread as options later).
fn check_options_class(options: &PyAny, index: usize) -> PyResult<()> {
    let py = options.py();
    let class = py
        .import(intern!(py, "oplog.operation"))?
        .getattr(intern!(py, "OperationOptions"))?;
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

/// UTF-8 views of the str objects of one encode call. Type names and paths repeat across a
/// batch (usually the very same interned objects), and under the abi3 API each conversion
/// allocates, so each distinct object is converted once.
#[derive(Default)]
struct Utf8Cache<'py> {
    seen: Vec<(usize, &'py str)>,
}

impl<'py> Utf8Cache<'py> {
    const CAPACITY: usize = 64;

    /// `s` as UTF-8; a str that has none (a lone surrogate) is an invalid `what` of item `index`.
    fn get(&mut self, s: &'py PyString, index: usize, what: &str) -> PyResult<&'py str> {
        let key = s.as_ptr() as usize;
        if let Some((_, utf8)) = self.seen.iter().find(|(k, _)| *k == key) {
            return Ok(utf8);
        }
        let utf8 = s.to_str().map_err(|_| {
            invalid(
                index,
                format!("{what} is not valid UTF-8 (a lone surrogate?)"),
            )
        })?;
        if self.seen.len() < Self::CAPACITY {
            // The object is kept alive by the batch for the whole call, so its address is not
            // reused while the cache exists.
            self.seen.push((key, utf8));
        }
        Ok(utf8)
    }
}

fn paths<'py>(
    obj: &'py PyAny,
    cache: &mut Utf8Cache<'py>,
    index: usize,
    what: &str,
) -> PyResult<Vec<&'py str>> {
    let not_paths = || invalid(index, format!("{what} must be a sequence of str"));
    let mut out = Vec::new();
    let mut push = |item: &'py PyAny| -> PyResult<()> {
        out.push(cache.get(item.downcast().map_err(|_| not_paths())?, index, what)?);
        Ok(())
    };
    if let Ok(tuple) = obj.downcast::<PyTuple>() {
        tuple.iter().try_for_each(&mut push)?;
    } else if obj.is_instance_of::<PyString>()? {
        return Err(not_paths());
    } else {
        for item in obj.iter().map_err(|_| not_paths())? {
            push(item?)?;
        }
    }
    Ok(out)
}

/// Reads one `oplog.Operation` (a 6-tuple) into an envelope that borrows from Python objects
/// kept alive by the batch and by the GIL pool of the current call.
fn envelope_of<'py>(
    item: &'py PyAny,
    cache: &mut Utf8Cache<'py>,
    index: usize,
) -> PyResult<Envelope<'py>> {
    let fields: &PyTuple = item
        .downcast()
        .ok()
        .filter(|t: &&PyTuple| t.len() == 6)
        .ok_or_else(|| {
            invalid(
                index,
                format!("expected an oplog.Operation, not {}", type_name_of(item)),
            )
        })?;
    let value = serialize(fields.get_item(0)?, index, "message")?;
    let name = fields.get_item(1)?;
    let type_name = cache.get(
        name.downcast::<PyString>().map_err(|_| {
            invalid(
                index,
                format!("type name must be str, not {}", type_name_of(name)),
            )
        })?,
        index,
        "type name",
    )?;
    let op_type = fields
        .get_item(2)?
        .extract::<u64>()
        .map_err(|_| invalid(index, "operation type must be an oplog.OpType".to_owned()))?;
    let options = fields.get_item(5)?;
    Ok(Envelope {
        type_name,
        value,
        op_type,
        field_mask: paths(fields.get_item(3)?, cache, index, "field_mask")?,
        null_mask: paths(fields.get_item(4)?, cache, index, "null_paths")?,
        options: if options.is_none() {
            None
        } else {
            check_options_class(options, index)?;
            Some(serialize(options, index, "options")?.into())
        },
    })
}

/// Encodes a batch of `oplog.Operation` into queue bytes.
#[pyfunction]
#[pyo3(text_signature = "(operations, version)")]
fn encode_operations(py: Python<'_>, operations: &PyAny, version: &str) -> PyResult<Py<PyBytes>> {
    let format = format_of(version)?;
    let mut cache = Utf8Cache::default();
    let envelopes = operations
        .iter()?
        .enumerate()
        .map(|(index, item)| envelope_of(item?, &mut cache, index))
        .collect::<PyResult<Vec<_>>>()?;
    let payload: usize = envelopes.iter().map(|env| env.value.len()).sum();
    let encode = || {
        let mut out = Vec::new();
        queue::encode(&envelopes, format, &mut out).map(|()| out)
    };
    let encoded = if payload >= RELEASE_GIL_AT {
        // Every borrowed str and bytes is immutable and owned by this call's GIL pool.
        py.allow_threads(encode)?
    } else {
        encode()?
    };
    Ok(PyBytes::new(py, &encoded).into())
}

/// Owns a new reference returned by the C API, failing with the pending Python error on NULL.
fn owned(py: Python<'_>, ptr: *mut ffi::PyObject) -> PyResult<PyObject> {
    // SAFETY: `ptr` is a new reference (or NULL with an exception set) from a C API call.
    unsafe { PyObject::from_owned_ptr_or_err(py, ptr) }
}

/// A tuple built from owned objects without registering each in the GIL pool.
fn tuple_of<const N: usize>(py: Python<'_>, items: [PyObject; N]) -> PyResult<PyObject> {
    // SAFETY: PyTuple_New(N) gives a tuple with N empty slots; each slot is filled exactly once
    // and PyTuple_SetItem steals the reference we hand it.
    unsafe {
        let tuple = owned(py, ffi::PyTuple_New(N as ffi::Py_ssize_t))?;
        for (i, item) in items.into_iter().enumerate() {
            ffi::PyTuple_SetItem(tuple.as_ptr(), i as ffi::Py_ssize_t, item.into_ptr());
        }
        Ok(tuple)
    }
}

fn str_of(py: Python<'_>, s: &str) -> PyResult<PyObject> {
    // SAFETY: a valid UTF-8 buffer and its length.
    owned(py, unsafe {
        ffi::PyUnicode_FromStringAndSize(s.as_ptr() as *const c_char, s.len() as ffi::Py_ssize_t)
    })
}

/// Builds Python values for decoded envelopes, sharing one str object per distinct type name or
/// path (they repeat across a queue).
struct Builder<'py> {
    py: Python<'py>,
    data: &'py PyBytes,
    view: Option<PyObject>,
    names: Vec<(&'py str, PyObject)>,
    empty: PyObject,
}

impl<'py> Builder<'py> {
    fn intern(&mut self, s: &'py str) -> PyResult<PyObject> {
        if let Some((_, obj)) = self.names.iter().find(|(n, _)| *n == s) {
            return Ok(obj.clone_ref(self.py));
        }
        let obj = str_of(self.py, s)?;
        if self.names.len() < 64 {
            self.names.push((s, obj.clone_ref(self.py)));
        }
        Ok(obj)
    }

    fn bytes(&self, b: &[u8]) -> PyResult<PyObject> {
        // SAFETY: a valid buffer and its length; the result is a new reference.
        owned(self.py, unsafe {
            ffi::PyBytes_FromStringAndSize(b.as_ptr() as *const c_char, b.len() as ffi::Py_ssize_t)
        })
    }

    fn value(&mut self, value: &'py [u8]) -> PyResult<PyObject> {
        if value.len() < VIEW_VALUES_AT {
            return self.bytes(value);
        }
        let py = self.py;
        let view = match &self.view {
            Some(view) => view.clone_ref(py),
            None => {
                // SAFETY: `data` is a live bytes object; the memoryview holds a reference to it.
                let view = owned(py, unsafe {
                    ffi::PyMemoryView_FromObject(self.data.as_ptr())
                })?;
                self.view = Some(view.clone_ref(py));
                view
            }
        };
        // `value` is a sub-slice of `data`, so its start is an offset into the input.
        let start = value.as_ptr() as usize - self.data.as_bytes().as_ptr() as usize;
        let slice =
            pyo3::types::PySlice::new(py, start as isize, (start + value.len()) as isize, 1);
        Ok(view.as_ref(py).get_item(slice)?.into())
    }

    fn paths(&mut self, paths: &[&'py str]) -> PyResult<PyObject> {
        if paths.is_empty() {
            return Ok(self.empty.clone_ref(self.py));
        }
        // SAFETY: as in `tuple_of`, each of the len slots is set once with a new reference.
        unsafe {
            let tuple = owned(self.py, ffi::PyTuple_New(paths.len() as ffi::Py_ssize_t))?;
            for (i, path) in paths.iter().enumerate() {
                let item = self.intern(path)?;
                ffi::PyTuple_SetItem(tuple.as_ptr(), i as ffi::Py_ssize_t, item.into_ptr());
            }
            Ok(tuple)
        }
    }

    fn operation(&mut self, offset: usize, env: &Envelope<'py>) -> PyResult<PyObject> {
        let py = self.py;
        let options = match &env.options {
            None => py.None(),
            Some(options) => self.bytes(options)?,
        };
        tuple_of(
            py,
            [
                self.intern(env.type_name)?,
                self.value(env.value)?,
                env.op_type.into_py(py),
                self.paths(&env.field_mask)?,
                self.paths(&env.null_mask)?,
                options,
                offset.into_py(py),
            ],
        )
    }
}

/// Decodes up to `limit` frames of `data` from byte `start`.
///
/// Returns `(operations, end)`: raw operation tuples `(type_name, value, op_type, field_mask,
/// null_paths, options, frame_offset)` and the offset after the last frame decoded.
#[pyfunction]
#[pyo3(text_signature = "(data, start, limit)")]
fn decode_operations(
    py: Python<'_>,
    data: &PyBytes,
    start: usize,
    limit: Option<usize>,
) -> PyResult<(PyObject, usize)> {
    let bytes = data.as_bytes();
    let limit = limit.unwrap_or(usize::MAX);
    let (envelopes, end) = if bytes.len() - start.min(bytes.len()) >= RELEASE_GIL_AT {
        // `bytes` is immutable and kept alive by the caller's reference for the whole call.
        py.allow_threads(|| queue::decode(bytes, start, limit))?
    } else {
        queue::decode(bytes, start, limit)?
    };
    let mut builder = Builder {
        py,
        data,
        view: None,
        names: Vec::new(),
        empty: PyTuple::empty(py).into(),
    };
    let len =
        isize::try_from(envelopes.len()).map_err(|e| PyOverflowError::new_err(e.to_string()))?;
    // SAFETY: PyList_New(len) has len empty slots; each is set once with a new reference.
    let list = unsafe {
        let list = owned(py, ffi::PyList_New(len))?;
        for (i, (offset, env)) in envelopes.iter().enumerate() {
            let op = builder.operation(*offset, env)?;
            ffi::PyList_SetItem(list.as_ptr(), i as ffi::Py_ssize_t, op.into_ptr());
        }
        list
    };
    Ok((list, end))
}

/// Packs a list of str, bytes or None as a PostgreSQL binary `text[]` (or `bytea[]`) payload.
#[pyfunction]
#[pyo3(text_signature = "(items, bytea)")]
fn pack_array(py: Python<'_>, items: &PyAny, bytea: bool) -> PyResult<Py<PyBytes>> {
    let mut cache = Utf8Cache::default();
    let mut elements: Vec<Option<&[u8]>> = Vec::new();
    for (index, item) in items.iter()?.enumerate() {
        let item = item?;
        elements.push(if item.is_none() {
            None
        } else if let Ok(s) = item.downcast::<PyString>() {
            Some(cache.get(s, index, "array element")?.as_bytes())
        } else if let Ok(b) = item.downcast::<PyBytes>() {
            Some(b.as_bytes())
        } else {
            return Err(invalid(
                index,
                format!(
                    "array elements are str, bytes or None, not {}",
                    type_name_of(item)
                ),
            ));
        });
    }
    let oid = if bytea {
        pgarray::BYTEA_OID
    } else {
        pgarray::TEXT_OID
    };
    Ok(PyBytes::new(py, &pgarray::pack_varlena(oid, &elements)?).into())
}

/// Packs a list of int as a PostgreSQL binary `int8[]` payload.
#[pyfunction]
#[pyo3(text_signature = "(items)")]
fn pack_int8_array(py: Python<'_>, items: Vec<i64>) -> PyResult<Py<PyBytes>> {
    Ok(PyBytes::new(py, &pgarray::pack_int8(&items)?).into())
}

/// The byte-level core of oplog.
#[pymodule]
fn _core(_py: Python<'_>, m: &PyModule) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(encode_operations, m)?)?;
    m.add_function(wrap_pyfunction!(decode_operations, m)?)?;
    m.add_function(wrap_pyfunction!(pack_array, m)?)?;
    m.add_function(wrap_pyfunction!(pack_int8_array, m)?)?;
    Ok(())
}
