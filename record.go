package idempotency

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"sync/atomic"
	"unicode/utf8"

	"google.golang.org/protobuf/proto"
)

// recordVersion is the version of the record format this package writes
// and reads. Fields it does not know are ignored, so a later version may add
// fields; a change that older readers must not misread takes a new version.
const recordVersion = 1

// A Record is a completed response, as the adapters store and replay it.
// One format serves both: the middleware fills Status, Header and Body; the
// interceptor fills Message and Body (protojson), or Error, and Header and
// Trailer.
type Record struct {
	// Status is the HTTP status, or for the interceptor the status that the
	// error's code maps to (200 for a response).
	Status int
	// Header holds the stored response headers.
	Header http.Header
	// Trailer holds the stored response trailers.
	Trailer http.Header
	// Body holds the response body bytes exactly as written; for the
	// interceptor, the response message in protojson.
	Body []byte
	// Message is the full name of the response message (interceptor).
	Message string
	// Error is the handler's error (interceptor).
	Error *ErrorRecord

	fingerprint Fingerprint
	// memo keeps what replays derive from a decoded record, which the
	// engine shares between replays of a hot key. Nil for records that were
	// not decoded from a store.
	memo *recordMemo
}

// recordMemo is the interceptor's decoded response message.
type recordMemo struct {
	message atomic.Pointer[proto.Message]
}

// An ErrorRecord is a stored [connect.Error].
type ErrorRecord struct {
	Code    uint32
	Message string
	Details []ErrorDetail
}

// An ErrorDetail is one stored error detail: a protobuf Any's type URL
// (without its prefix, as connect reports it) and value.
type ErrorDetail struct {
	Type  string
	Value []byte
}

// errCorruptRecord wraps every decoding failure.
var errCorruptRecord = errors.New("idempotency: corrupt record")

// wireRecord is the JSON shape of a record.
type wireRecord struct {
	V       int                 `json:"v"`
	FP      []byte              `json:"fp,omitempty"`
	Status  int                 `json:"s"`
	Header  map[string][]string `json:"h,omitempty"`
	Trailer map[string][]string `json:"t,omitempty"`
	Body    []byte              `json:"b,omitempty"`
	Message string              `json:"m,omitempty"`
	Error   *wireError          `json:"e,omitempty"`
}

type wireError struct {
	Code    uint32       `json:"c"`
	Message string       `json:"msg,omitempty"`
	Details []wireDetail `json:"d,omitempty"`
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
		dst = appendBase64(dst, r.fingerprint[:])
	}
	dst = append(dst, `,"s":`...)
	dst = strconv.AppendInt(dst, int64(r.Status), 10)
	if len(r.Header) > 0 {
		dst = append(dst, `,"h":`...)
		dst = appendHeader(dst, r.Header)
	}
	if len(r.Trailer) > 0 {
		dst = append(dst, `,"t":`...)
		dst = appendHeader(dst, r.Trailer)
	}
	if len(r.Body) > 0 {
		dst = append(dst, `,"b":`...)
		dst = appendBase64(dst, r.Body)
	}
	if r.Message != "" {
		dst = append(dst, `,"m":`...)
		dst = appendString(dst, r.Message)
	}
	if e := r.Error; e != nil {
		dst = append(dst, `,"e":{"c":`...)
		dst = strconv.AppendUint(dst, uint64(e.Code), 10)
		if e.Message != "" {
			dst = append(dst, `,"msg":`...)
			dst = appendString(dst, e.Message)
		}
		if len(e.Details) > 0 {
			dst = append(dst, `,"d":[`...)
			for i, d := range e.Details {
				if i > 0 {
					dst = append(dst, ',')
				}
				dst = append(dst, `{"t":`...)
				dst = appendString(dst, d.Type)
				dst = append(dst, `,"v":`...)
				dst = appendBase64(dst, d.Value)
				dst = append(dst, '}')
			}
			dst = append(dst, ']')
		}
		dst = append(dst, '}')
	}
	return append(dst, '}')
}

func appendHeader(dst []byte, h http.Header) []byte {
	dst = append(dst, '{')
	first := true
	for k, vs := range h {
		if !first {
			dst = append(dst, ',')
		}
		first = false
		dst = appendString(dst, k)
		dst = append(dst, ':', '[')
		for i, v := range vs {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = appendString(dst, v)
		}
		dst = append(dst, ']')
	}
	return append(dst, '}')
}

func appendBase64(dst, b []byte) []byte {
	dst = append(dst, '"')
	dst = base64.StdEncoding.AppendEncode(dst, b)
	return append(dst, '"')
}

const hexDigits = "0123456789abcdef"

// appendString appends s as a JSON string. Invalid UTF-8 becomes U+FFFD, as
// encoding/json does.
func appendString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch c {
			case '"', '\\':
				dst = append(dst, '\\', c)
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
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
	if e := w.Error; e != nil {
		r.Error = &ErrorRecord{Code: e.Code, Message: e.Message}
		for _, d := range e.Details {
			r.Error.Details = append(r.Error.Details, ErrorDetail(d))
		}
	}
	return r, nil
}

// DecodeRecord decodes a stored record, as [Inspector.Inspect] returns it,
// for tools that show what a key holds. A record that cannot be decoded is
// an error, never a panic.
func DecodeRecord(data []byte) (*Record, error) { return decodeRecord(data) }
