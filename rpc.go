package idempotency

import (
	"context"
	"errors"
	"net/http"

	"google.golang.org/protobuf/proto"

	"github.com/idemkey/idempotency/internal/protorec"
)

// What the RPC adapters (the Connect interceptors and package grpcmw)
// share to record a unary call: each translates its framework's response,
// error and metadata into a [Record] with these, and back with
// [Record.ResponseMessage].

// AppendMetadata appends to dst the entries of from (response headers or
// trailers, or an error's metadata) that a replay may send again, and
// returns dst, made on first use: everything but protocol entries
// (Content-Type, Grpc-*, Connect-*, pseudo-headers), hop-by-hop and
// credential headers ([NeverStored]) and the replay marker. Values are
// copied, never shared with from.
func (e *Engine) AppendMetadata(dst, from http.Header) http.Header {
	return protorec.AppendVisible(dst, from, e.cfg.replayHeader, NeverStored)
}

// CompleteMessage stores msg, with the headers and trailers already in rec,
// as the response of an RPC adapter's execution, as [Execution.Complete]
// does: it sets rec's Status, Message and Body. A message that cannot be
// recorded (protojson rejects it), or whose record is over
// [WithMaxResponseSize], is not stored: the claim is released with the
// reason ([Execution.Skip]). Like Complete, it does not keep rec.
func (x *Execution) CompleteMessage(rec *Record, msg proto.Message) error {
	buf := getBuffer()
	defer putBuffer(buf)
	body, err := protorec.AppendMessage((*buf)[:0], msg)
	switch {
	case err != nil:
		return x.Skip(ReasonNotEncodable)
	case int64(len(body)) > x.e.cfg.maxResponse:
		*buf = body
		return x.Skip(ReasonTooLarge)
	}
	*buf = body // so that the pool keeps what the encoding grew
	rec.Status = http.StatusOK
	rec.Message = string(msg.ProtoReflect().Descriptor().FullName())
	rec.Body = body
	return x.Complete(rec)
}

// HandlerGaveUp reports whether an RPC handler returned because its
// request's context ended rather than with an answer of its own: ctx
// ended, and err is the context's error (or its cause) or carries code,
// the RPC code the adapter's framework reads from err, Canceled (1) or
// DeadlineExceeded (4). Such an answer is not stored
// ([ReasonContextEnded]).
func HandlerGaveUp(ctx context.Context, err error, code uint32) bool {
	if err == nil || ctx.Err() == nil {
		return false
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, context.Cause(ctx)) {
		return true
	}
	return code == 1 || code == 4
}
