package protorec

import (
	"encoding/base64"
	"math"
	"strconv"
	"unicode/utf8"

	"google.golang.org/protobuf/reflect/protoreflect"
)

// maxMessageDepth is how deeply nested a message AppendJSON encodes.
// Deeper messages are rare enough to leave to protojson, and the limit bounds
// the recursion whatever the message holds.
const maxMessageDepth = 32

// AppendJSON appends m in protojson form to dst. It reports false,
// with dst unchanged in length, when m holds something it leaves to
// protojson: the caller then uses protojson.Marshal.
//
// Every response the interceptor stores is encoded, and protojson costs
// about a microsecond and a dozen allocations even for a small message;
// this encoder allocates nothing for messages without maps or repeated
// fields. Its output is not byte for byte protojson's, whose output is not
// stable either. What it guarantees is that protojson.Unmarshal decodes
// its output into a message equal to m, and that it declines every message
// that protojson.Marshal rejects. It declines the messages of package
// google.protobuf but Empty (the well-known types have JSON forms of their
// own); messages with extension ranges (extensions, MessageSets) or
// required fields (which protojson checks); groups; the
// google.protobuf.NullValue enum; strings, map keys and field names that
// are not valid UTF-8; and nesting deeper than maxMessageDepth.
func AppendJSON(dst []byte, m protoreflect.Message) ([]byte, bool) {
	n := len(dst)
	dst, ok := appendMessage(dst, m, 0)
	if !ok {
		return dst[:n], false
	}
	return dst, true
}

func appendMessage(dst []byte, m protoreflect.Message, depth int) ([]byte, bool) {
	md := m.Descriptor()
	if depth > maxMessageDepth || !plainMessage(md) {
		return dst, false
	}
	dst = append(dst, '{')
	first := true
	// Walking the descriptor rather than m.Range spares the closure that
	// Range would take, and with it an allocation per message. It skips
	// extensions, which plainMessage rules out.
	fields := md.Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		v, ok := populated(m, fd)
		if !ok {
			continue
		}
		if !first {
			dst = append(dst, ',')
		}
		first = false
		// A json_name option may hold any string, and protojson rejects
		// names that are not UTF-8.
		name := fd.JSONName()
		if !utf8.ValidString(name) {
			return dst, false
		}
		dst = AppendString(dst, name)
		dst = append(dst, ':')
		switch {
		case fd.IsList():
			dst, ok = appendList(dst, v.List(), fd, depth)
		case fd.IsMap():
			dst, ok = appendMap(dst, v.Map(), fd, depth)
		default:
			dst, ok = appendSingular(dst, v, fd, depth)
		}
		if !ok {
			return dst, false
		}
	}
	return append(dst, '}'), true
}

// populated returns the value of fd in m, and whether it is populated, as
// m.Has(fd) reports it.
func populated(m protoreflect.Message, fd protoreflect.FieldDescriptor) (protoreflect.Value, bool) {
	if fd.HasPresence() || fd.IsList() || fd.IsMap() {
		if !m.Has(fd) {
			return protoreflect.Value{}, false
		}
		return m.Get(fd), true
	}
	// A scalar without presence is populated when it is not its zero value
	// (-0 included). Testing that on the value spares Has, which for
	// generated messages goes through package reflect where Get does not.
	v := m.Get(fd)
	switch fd.Kind() {
	case protoreflect.BoolKind:
		return v, v.Bool()
	case protoreflect.EnumKind:
		return v, v.Enum() != 0
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind,
		protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind:
		return v, v.Int() != 0
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind,
		protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		return v, v.Uint() != 0
	case protoreflect.FloatKind, protoreflect.DoubleKind:
		return v, math.Float64bits(v.Float()) != 0
	case protoreflect.StringKind:
		return v, v.String() != ""
	case protoreflect.BytesKind:
		return v, len(v.Bytes()) > 0
	}
	return v, m.Has(fd)
}

// plainMessage reports whether protojson encodes messages of type md
// field by field, with nothing for appendMessage to check that it does not.
func plainMessage(md protoreflect.MessageDescriptor) bool {
	if md.ParentFile().Package() == "google.protobuf" && md.FullName() != "google.protobuf.Empty" {
		return false
	}
	return md.RequiredNumbers().Len() == 0 && md.ExtensionRanges().Len() == 0
}

func appendList(dst []byte, l protoreflect.List, fd protoreflect.FieldDescriptor, depth int) ([]byte, bool) {
	dst = append(dst, '[')
	for i := range l.Len() {
		if i > 0 {
			dst = append(dst, ',')
		}
		var ok bool
		if dst, ok = appendSingular(dst, l.Get(i), fd, depth); !ok {
			return dst, false
		}
	}
	return append(dst, ']'), true
}

func appendMap(dst []byte, mp protoreflect.Map, fd protoreflect.FieldDescriptor, depth int) ([]byte, bool) {
	kd, vd := fd.MapKey(), fd.MapValue()
	dst = append(dst, '{')
	first, ok := true, true
	// protojson sorts the keys; decoding does not need it.
	mp.Range(func(k protoreflect.MapKey, v protoreflect.Value) bool {
		if !first {
			dst = append(dst, ',')
		}
		first = false
		if dst, ok = appendMapKey(dst, k, kd); !ok {
			return false
		}
		dst = append(dst, ':')
		dst, ok = appendSingular(dst, v, vd, depth)
		return ok
	})
	if !ok {
		return dst, false
	}
	return append(dst, '}'), true
}

// appendMapKey appends a map key as a JSON object name: JSON names are
// strings, so numbers and bools are quoted.
func appendMapKey(dst []byte, k protoreflect.MapKey, kd protoreflect.FieldDescriptor) ([]byte, bool) {
	switch kd.Kind() {
	case protoreflect.StringKind:
		return appendValidString(dst, k.String())
	case protoreflect.BoolKind:
		if k.Bool() {
			return append(dst, `"true"`...), true
		}
		return append(dst, `"false"`...), true
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind,
		protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind:
		dst = append(dst, '"')
		dst = strconv.AppendInt(dst, k.Int(), 10)
		return append(dst, '"'), true
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind,
		protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		dst = append(dst, '"')
		dst = strconv.AppendUint(dst, k.Uint(), 10)
		return append(dst, '"'), true
	}
	return dst, false
}

// appendSingular appends one value of a field that is not a list or a map,
// or one element of a list or a map value.
func appendSingular(dst []byte, v protoreflect.Value, fd protoreflect.FieldDescriptor, depth int) ([]byte, bool) {
	switch fd.Kind() {
	case protoreflect.BoolKind:
		return strconv.AppendBool(dst, v.Bool()), true
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind:
		return strconv.AppendInt(dst, v.Int(), 10), true
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind:
		return strconv.AppendUint(dst, v.Uint(), 10), true
	case protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind:
		// 64-bit integers are strings in protojson, since JSON readers
		// commonly hold numbers in doubles.
		dst = append(dst, '"')
		dst = strconv.AppendInt(dst, v.Int(), 10)
		return append(dst, '"'), true
	case protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		dst = append(dst, '"')
		dst = strconv.AppendUint(dst, v.Uint(), 10)
		return append(dst, '"'), true
	case protoreflect.FloatKind:
		return appendFloat(dst, v.Float(), 32), true
	case protoreflect.DoubleKind:
		return appendFloat(dst, v.Float(), 64), true
	case protoreflect.StringKind:
		return appendValidString(dst, v.String())
	case protoreflect.BytesKind:
		return AppendBase64(dst, v.Bytes()), true
	case protoreflect.EnumKind:
		ed := fd.Enum()
		if ed.FullName() == "google.protobuf.NullValue" {
			return dst, false
		}
		// A number the descriptor does not know (an open enum's value from
		// a newer schema) is written as a number, as protojson does.
		evd := ed.Values().ByNumber(v.Enum())
		if evd == nil {
			return strconv.AppendInt(dst, int64(v.Enum()), 10), true
		}
		// Value names are identifiers: nothing to escape, always UTF-8.
		dst = append(dst, '"')
		dst = append(dst, evd.Name()...)
		return append(dst, '"'), true
	case protoreflect.MessageKind:
		return appendMessage(dst, v.Message(), depth+1)
	}
	// Groups, and kinds from the future.
	return dst, false
}

// appendValidString appends s as a JSON string, or reports false if s is
// not valid UTF-8: protojson rejects it, where appendString would replace
// the invalid bytes and store a response other than the one sent.
func appendValidString(dst []byte, s string) ([]byte, bool) {
	if !utf8.ValidString(s) {
		return dst, false
	}
	return AppendString(dst, s), true
}

// appendFloat appends f as protojson writes a float of bitSize bits: the
// special values as strings, the others as the shortest number that reads
// back as f. Go's exponent form ("1e+21", "5e-324") is valid JSON.
func appendFloat(dst []byte, f float64, bitSize int) []byte {
	switch {
	case math.IsNaN(f):
		return append(dst, `"NaN"`...)
	case math.IsInf(f, 1):
		return append(dst, `"Infinity"`...)
	case math.IsInf(f, -1):
		return append(dst, `"-Infinity"`...)
	}
	return strconv.AppendFloat(dst, f, 'g', -1, bitSize)
}

const hexDigits = "0123456789abcdef"

// AppendString appends s as a JSON string. Invalid UTF-8 becomes U+FFFD, as
// encoding/json does.
func AppendString(dst []byte, s string) []byte {
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

// AppendBase64 appends b as a JSON string in standard base64, as
// encoding/json and protojson write bytes.
func AppendBase64(dst, b []byte) []byte {
	dst = append(dst, '"')
	dst = base64.StdEncoding.AppendEncode(dst, b)
	return append(dst, '"')
}
