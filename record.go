package idempotency

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"sync/atomic"
	"unicode/utf8"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/idemkey/idempotency/internal/protorec"
)

// recordVersion is the version of the record format this package writes
// and reads. Fields it does not know are ignored, so a later version may add
// fields; a change that older readers must not misread takes a new version.
const recordVersion = 1

// A Record is a completed response, as the adapters store and replay it.
// One format serves every adapter: the middleware fills Status, Header and
// Body; the RPC adapters fill Message and Body (protojson), or Error, and
// Header and Trailer. Every string is kept byte for byte, including bytes
// that are not UTF-8.
type Record struct {
	// Status is the HTTP status, or for the RPC adapters the status that
	// the error's code maps to (200 for a response).
	Status int
	// Header holds the stored response headers (RPC: the response header
	// metadata, apart from an error's own metadata).
	Header http.Header
	// Trailer holds the stored response trailers.
	Trailer http.Header
	// Body holds the response body bytes exactly as written; for the RPC
	// adapters, the response message in protojson.
	Body []byte
	// Message is the full name of the response message (RPC adapters).
	Message string
	// Error is the handler's error (RPC adapters).
	Error *ErrorRecord

	fingerprint Fingerprint
	// memo keeps what replays derive from a decoded record, which the
	// engine shares between replays of a hot key. Nil for records that were
	// not decoded from a store.
	memo *recordMemo
}

// recordMemo keeps the decoded response message of a record, as the
// template that every replay copies: the template itself never leaves the
// record.
type recordMemo struct {
	message atomic.Pointer[proto.Message]
}

// An ErrorRecord is a stored RPC error: a [connect.Error] or a gRPC status.
type ErrorRecord struct {
	// Code is the error code (Connect and gRPC codes share their numbers).
	Code uint32
	// Message is the error's message, byte for byte.
	Message string
	// Details are the error's details, in order.
	Details []ErrorDetail
	// Meta is the error's own metadata (a Connect v1 error's Meta), which
	// the protocols send apart from the headers the handler set: a replay
	// puts it back on the error, and the headers back where they were.
	Meta http.Header
}

// An ErrorDetail is one stored error detail: a protobuf Any's type URL
// (without its prefix, as connect reports it) and value.
type ErrorDetail struct {
	// Type is the detail's full message name.
	Type string
	// Value is the detail's message in the protobuf binary format.
	Value []byte
}

// errCorruptRecord wraps every decoding failure.
var errCorruptRecord = errors.New("idempotency: corrupt record")

// wireRecord is the JSON shape of a record.
//
// JSON strings hold UTF-8 only, so a header whose name or values are not
// valid UTF-8 goes to the "x" form beside its map ("hx", "tx"): a list of
// entries, each its name then its values, base64-encoded; an error message
// that is not valid UTF-8 goes to "msgx", base64-encoded. A reader that does
// not know these fields replays without them.
type wireRecord struct {
	V       int                 `json:"v"`
	FP      []byte              `json:"fp,omitempty"`
	Status  int                 `json:"s"`
	Header  map[string][]string `json:"h,omitempty"`
	HeaderX [][][]byte          `json:"hx,omitempty"`
	Trailer map[string][]string `json:"t,omitempty"`
	TrailX  [][][]byte          `json:"tx,omitempty"`
	Body    []byte              `json:"b,omitempty"`
	Message string              `json:"m,omitempty"`
	Error   *wireError          `json:"e,omitempty"`
}

type wireError struct {
	Code     uint32              `json:"c"`
	Message  string              `json:"msg,omitempty"`
	MessageX []byte              `json:"msgx,omitempty"`
	Details  []wireDetail        `json:"d,omitempty"`
	Meta     map[string][]string `json:"h,omitempty"`
	MetaX    [][][]byte          `json:"hx,omitempty"`
}

type wireDetail struct {
	Type  string `json:"t"`
	Value []byte `json:"v"`
}

// appendRecord appends r's JSON encoding to dst. It is written by hand
// because it runs on every stored response and reflection costs more than
// the rest of the engine.
func appendRecord(dst []byte, r *Record) []byte {
	dst = append(dst, `{"v":`...)
	dst = strconv.AppendInt(dst, recordVersion, 10)
	if r.fingerprint != (Fingerprint{}) {
		dst = append(dst, `,"fp":`...)
		dst = protorec.AppendBase64(dst, r.fingerprint[:])
	}
	dst = append(dst, `,"s":`...)
	dst = strconv.AppendInt(dst, int64(r.Status), 10)
	dst = appendHeader(dst, `,"h":`, `,"hx":`, r.Header)
	dst = appendHeader(dst, `,"t":`, `,"tx":`, r.Trailer)
	if len(r.Body) > 0 {
		dst = append(dst, `,"b":`...)
		dst = protorec.AppendBase64(dst, r.Body)
	}
	if r.Message != "" {
		dst = append(dst, `,"m":`...)
		dst = protorec.AppendString(dst, r.Message)
	}
	if e := r.Error; e != nil {
		dst = append(dst, `,"e":{"c":`...)
		dst = strconv.AppendUint(dst, uint64(e.Code), 10)
		switch {
		case e.Message == "":
		case utf8.ValidString(e.Message):
			dst = append(dst, `,"msg":`...)
			dst = protorec.AppendString(dst, e.Message)
		default:
			dst = append(dst, `,"msgx":`...)
			dst = protorec.AppendBase64(dst, []byte(e.Message))
		}
		if len(e.Details) > 0 {
			dst = append(dst, `,"d":[`...)
			for i, d := range e.Details {
				if i > 0 {
					dst = append(dst, ',')
				}
				dst = append(dst, `{"t":`...)
				dst = protorec.AppendString(dst, d.Type)
				dst = append(dst, `,"v":`...)
				dst = protorec.AppendBase64(dst, d.Value)
				dst = append(dst, '}')
			}
			dst = append(dst, ']')
		}
		dst = appendHeader(dst, `,"h":`, `,"hx":`, e.Meta)
		dst = append(dst, '}')
	}
	return append(dst, '}')
}

// appendHeader appends h under the field name plain (with its comma), and
// the entries that are not valid UTF-8 under exact, in the "x" form. An
// empty header appends nothing.
func appendHeader(dst []byte, plain, exact string, h http.Header) []byte {
	if len(h) == 0 {
		return dst
	}
	n, inexact := 0, 0
	for k, vs := range h {
		if !validEntry(k, vs) {
			inexact++
			continue
		}
		if n == 0 {
			dst = append(dst, plain...)
			dst = append(dst, '{')
		} else {
			dst = append(dst, ',')
		}
		n++
		dst = protorec.AppendString(dst, k)
		dst = append(dst, ':', '[')
		for i, v := range vs {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = protorec.AppendString(dst, v)
		}
		dst = append(dst, ']')
	}
	if n > 0 {
		dst = append(dst, '}')
	}
	if inexact == 0 {
		return dst
	}
	dst = append(dst, exact...)
	dst = append(dst, '[')
	n = 0
	for k, vs := range h {
		if validEntry(k, vs) {
			continue
		}
		if n > 0 {
			dst = append(dst, ',')
		}
		n++
		dst = append(dst, '[')
		dst = protorec.AppendBase64(dst, []byte(k))
		for _, v := range vs {
			dst = append(dst, ',')
			dst = protorec.AppendBase64(dst, []byte(v))
		}
		dst = append(dst, ']')
	}
	return append(dst, ']')
}

func validEntry(k string, vs []string) bool {
	if !utf8.ValidString(k) {
		return false
	}
	for _, v := range vs {
		if !utf8.ValidString(v) {
			return false
		}
	}
	return true
}

// exactHeader merges the "x" form of a header into h, made on first use.
func exactHeader(h http.Header, x [][][]byte) (http.Header, error) {
	for _, entry := range x {
		if len(entry) == 0 {
			return nil, fmt.Errorf("%w: header entry without a name", errCorruptRecord)
		}
		if h == nil {
			h = make(http.Header, len(x))
		}
		k := string(entry[0])
		for _, v := range entry[1:] {
			h[k] = append(h[k], string(v))
		}
	}
	return h, nil
}

// decodeRecord decodes a stored record. Every failure wraps
// errCorruptRecord: a half-written or foreign record is an error, never a
// panic and never someone else's response.
func decodeRecord(data []byte) (*Record, error) {
	var w wireRecord
	if err := json.Unmarshal(data, &w); err != nil {
		return nil, fmt.Errorf("%w: %w", errCorruptRecord, err)
	}
	if w.V != recordVersion {
		return nil, fmt.Errorf("%w: unsupported version %d", errCorruptRecord, w.V)
	}
	if w.Status < 100 || w.Status > 599 {
		return nil, fmt.Errorf("%w: status %d out of range", errCorruptRecord, w.Status)
	}
	if len(w.FP) != 0 && len(w.FP) != len(Fingerprint{}) {
		return nil, fmt.Errorf("%w: fingerprint of %d bytes", errCorruptRecord, len(w.FP))
	}
	r := &Record{
		memo:    new(recordMemo),
		Status:  w.Status,
		Header:  w.Header,
		Trailer: w.Trailer,
		Body:    w.Body,
		Message: w.Message,
	}
	copy(r.fingerprint[:], w.FP)
	var err error
	if r.Header, err = exactHeader(r.Header, w.HeaderX); err != nil {
		return nil, err
	}
	if r.Trailer, err = exactHeader(r.Trailer, w.TrailX); err != nil {
		return nil, err
	}
	if e := w.Error; e != nil {
		r.Error = &ErrorRecord{Code: e.Code, Message: e.Message, Meta: e.Meta}
		if e.MessageX != nil {
			r.Error.Message = string(e.MessageX)
		}
		for _, d := range e.Details {
			r.Error.Details = append(r.Error.Details, ErrorDetail(d))
		}
		if r.Error.Meta, err = exactHeader(r.Error.Meta, e.MetaX); err != nil {
			return nil, err
		}
	}
	return r, nil
}

// ResponseMessage returns the record's response message (RPC adapters),
// decoded from the registry by its stored name, or through output, the
// procedure's response descriptor, for a type the registry lacks. Every
// call returns a message of its own, which the caller may change: a record
// decoded from a store keeps its decoded message as a template and hands
// out copies, so a hot key is decoded once.
func (r *Record) ResponseMessage(output protoreflect.MessageDescriptor) (proto.Message, error) {
	if r.Message == "" {
		return nil, fmt.Errorf("%w: the record holds neither a message nor an error", protorec.ErrCorrupt)
	}
	if r.memo != nil {
		if m := r.memo.message.Load(); m != nil {
			return proto.Clone(*m), nil
		}
	}
	msg, err := protorec.DecodeMessage(r.Message, r.Body, output)
	if err != nil {
		return nil, err
	}
	if r.memo == nil {
		return msg, nil
	}
	r.memo.message.Store(&msg)
	return proto.Clone(msg), nil
}

// DecodeRecord decodes a stored record, as [Inspector.Inspect] returns it,
// for tools that show what a key holds. A record that cannot be decoded is
// an error, never a panic.
func DecodeRecord(data []byte) (*Record, error) { return decodeRecord(data) }
