// Package protorec holds what every RPC adapter of the module shares to
// record and replay a unary call: encoding a protobuf response for the
// record, decoding it again (through the registry, or through the
// procedure's schema for types loaded at run time), the deterministic form
// that fingerprints a request, which metadata entries are stored, and the
// HTTP status of an RPC code. It knows no RPC framework: the Connect v1,
// Connect v2 and grpc-go adapters translate their own types to and from
// these.
package protorec

import (
	"errors"
	"fmt"
	"net/http"
	"net/textproto"
	"strings"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/dynamicpb"
)

// ErrCorrupt wraps every reason why a stored message cannot be replayed.
var ErrCorrupt = errors.New("idempotency: stored response cannot be replayed")

// AppendMessage appends msg's protojson encoding to dst: the fast encoder of
// this package where it can, protojson's otherwise.
func AppendMessage(dst []byte, msg proto.Message) ([]byte, error) {
	if b, ok := AppendJSON(dst, msg.ProtoReflect()); ok {
		return b, nil
	}
	return protojson.MarshalOptions{}.MarshalAppend(dst, msg)
}

// AppendDeterministic appends the deterministic binary form of msg to dst:
// the same bytes for one message, whether it came as JSON or binary.
func AppendDeterministic(dst []byte, msg proto.Message) ([]byte, error) {
	b, err := proto.MarshalOptions{Deterministic: true, AllowPartial: true}.MarshalAppend(dst, msg)
	if err != nil {
		return dst, errors.New("idempotency: the request message cannot be encoded to fingerprint it")
	}
	return b, nil
}

// DecodeMessage decodes a stored response named name from its protojson
// body. The type comes from the global registry, or, for a type the
// registry lacks (a schema loaded at run time), from output, the
// procedure's response descriptor when the adapter knows it. output, when
// given, must name the stored type: a record of another procedure's type is
// corrupt.
func DecodeMessage(name string, body []byte, output protoreflect.MessageDescriptor) (proto.Message, error) {
	full := protoreflect.FullName(name)
	if !full.IsValid() {
		return nil, fmt.Errorf("%w: invalid message name %q", ErrCorrupt, name)
	}
	if output != nil && output.FullName() != full {
		return nil, fmt.Errorf("%w: stored %s, but the procedure answers %s", ErrCorrupt, full, output.FullName())
	}
	var msg proto.Message
	opts := protojson.UnmarshalOptions{DiscardUnknown: true}
	if mt, err := protoregistry.GlobalTypes.FindMessageByName(full); err == nil {
		msg = mt.New().Interface()
	} else if output != nil {
		msg = dynamicpb.NewMessage(output)
	} else {
		return nil, fmt.Errorf("%w: message %s: %w", ErrCorrupt, full, err)
	}
	if len(body) > 0 {
		if err := opts.Unmarshal(body, msg); err != nil {
			return nil, fmt.Errorf("%w: message %s: %w", ErrCorrupt, full, err)
		}
	}
	return msg, nil
}

// AppendVisible appends to dst the entries of from that a replay may send
// again, and returns dst (made on first use): everything but protocol
// headers (Content-Type, Grpc-*, Connect-*, ...), hop-by-hop and
// credential headers (neverStored), and the replay marker, which only a
// replay carries. The values are copied, never shared with from.
func AppendVisible(dst, from map[string][]string, replayHeader string, neverStored func(string) bool) map[string][]string {
	for k, vs := range from {
		if len(vs) == 0 || !Storable(k, replayHeader, neverStored) {
			continue
		}
		if dst == nil {
			dst = make(map[string][]string, len(from))
		}
		dst[k] = append(dst[k], vs...)
	}
	return dst
}

// Storable reports whether a metadata entry of an RPC response is stored.
func Storable(name, replayHeader string, neverStored func(string) bool) bool {
	name = textproto.CanonicalMIMEHeaderKey(name)
	if neverStored(name) || name == replayHeader {
		return false
	}
	switch name {
	case "Content-Type", "Content-Encoding", "Accept-Encoding", "Date", "Host", "User-Agent", "Te", "Trailer":
		return false
	}
	return !strings.HasPrefix(name, "Connect-") && !strings.HasPrefix(name, "Grpc-") &&
		!strings.HasPrefix(name, ":")
}

// HTTPStatus is the HTTP status that the Connect protocol answers an RPC
// code with (gRPC and Connect codes share their numbers); 200 for zero.
func HTTPStatus(code uint32) int {
	switch code {
	case 0:
		return http.StatusOK
	case 1: // canceled
		return 499
	case 3, 9, 11: // invalid argument, failed precondition, out of range
		return http.StatusBadRequest
	case 4: // deadline exceeded
		return http.StatusGatewayTimeout
	case 5: // not found
		return http.StatusNotFound
	case 6, 10: // already exists, aborted
		return http.StatusConflict
	case 7: // permission denied
		return http.StatusForbidden
	case 8: // resource exhausted
		return http.StatusTooManyRequests
	case 12: // unimplemented
		return http.StatusNotImplemented
	case 14: // unavailable
		return http.StatusServiceUnavailable
	case 16: // unauthenticated
		return http.StatusUnauthorized
	default: // unknown, internal, data loss and codes from the future
		return http.StatusInternalServerError
	}
}

// ValidCode reports whether code is an error code a replay may carry.
func ValidCode(code uint32) bool { return code >= 1 && code <= 16 }
