package idempotency

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/idemkey/idempotency/internal/protorec"
)

// replayed is the message of a replayed response. A replay is built from
// the protobuf registry, so the interceptor cannot name the generated Go
// type that a [connect.Response] would need; connect-go only hands the
// message to its codecs, which need nothing but a [proto.Message], and the
// embedded message provides that, so every protocol sends the concrete
// message. Unwrap returns it, for interceptors outside this one.
type replayed struct{ proto.Message }

// Unwrap returns the concrete message.
func (r *replayed) Unwrap() proto.Message { return r.Message }

// errCorruptReplay wraps every reason why a stored record cannot be
// replayed as a Connect response.
var errCorruptReplay = protorec.ErrCorrupt

// replay answers a request from a stored record, exactly as a unary
// function would: a response, or the stored handler error. A record that
// cannot be turned back into either is logged and answered as a store
// failure. Everything a replay needs beyond the record is built here, so
// that decoded messages can be kept for hot keys without touching the
// callers.
func (i *Interceptor) replay(ctx context.Context, spec connect.Spec, req *Request, rec *Record) (connect.AnyResponse, error) {
	var (
		res connect.AnyResponse
		err error
	)
	if rec.Error != nil {
		var ce *connect.Error
		if ce, err = i.replayedError(ctx, rec); err == nil {
			return nil, ce
		}
	} else if res, err = i.replayedResponse(spec, rec); err == nil {
		return res, nil
	}
	i.cfg.logger.LogAttrs(ctx, slog.LevelError, "idempotency: stored response cannot be replayed",
		slog.String("key_hash", keyHash(storageKey(req.Scope, req.Route, req.Key))),
		slog.String("procedure", spec.Procedure), slog.Any("error", err))
	return nil, i.libraryError(fmt.Errorf("%w: %w", ErrStoreUnavailable, err))
}

// replayedResponse rebuilds a stored response message, with its headers,
// trailers and the replay header. Every replay gets a message and header
// values of its own, so an outer interceptor that edits what it returns
// never changes what another replay sends.
func (i *Interceptor) replayedResponse(spec connect.Spec, rec *Record) (connect.AnyResponse, error) {
	var output protoreflect.MessageDescriptor
	if md, ok := spec.Schema.(protoreflect.MethodDescriptor); ok {
		output = md.Output()
	}
	msg, err := rec.ResponseMessage(output)
	if err != nil {
		return nil, err
	}
	res := connect.NewResponse(&replayed{msg})
	copyHeader(res.Header(), rec.Header)
	if len(rec.Trailer) > 0 {
		// Trailer makes a map on first use: most responses have none.
		copyHeader(res.Trailer(), rec.Trailer)
	}
	res.Header()[i.cfg.replayHeader] = []string{"true"}
	return res, nil
}

// replayedError rebuilds a stored handler error, with its details and its
// metadata, the replay header in its metadata, and the headers and
// trailers set through the call info back in the call info, so that each
// goes where the first answer sent it.
func (i *Interceptor) replayedError(ctx context.Context, rec *Record) (*connect.Error, error) {
	e := rec.Error
	if !protorec.ValidCode(e.Code) {
		return nil, fmt.Errorf("%w: error code %d", errCorruptReplay, e.Code)
	}
	var cause error
	if e.Message != "" {
		cause = errors.New(e.Message)
	}
	ce := connect.NewError(connect.Code(e.Code), cause)
	for _, d := range e.Details {
		if d.Type == "" {
			return nil, fmt.Errorf("%w: error detail without a type", errCorruptReplay)
		}
		detail, err := connect.NewErrorDetail(&anypb.Any{TypeUrl: "type.googleapis.com/" + d.Type, Value: d.Value})
		if err != nil {
			return nil, fmt.Errorf("%w: error detail %s: %w", errCorruptReplay, d.Type, err)
		}
		ce.AddDetail(detail)
	}
	copyHeader(ce.Meta(), e.Meta)
	if info, ok := connect.CallInfoForHandlerContext(ctx); ok {
		copyHeader(info.ResponseHeader(), rec.Header)
		copyHeader(info.ResponseTrailer(), rec.Trailer)
	} else {
		copyHeader(ce.Meta(), rec.Header)
		copyHeader(ce.Meta(), rec.Trailer)
	}
	ce.Meta().Set(i.cfg.replayHeader, "true")
	return ce, nil
}

// copyHeader copies stored headers, leaving out those that are never
// replayed, even from a record that another writer put in the store. The
// values are copied: the record is shared with other replays.
func copyHeader(dst, src http.Header) {
	for k, vs := range src {
		if NeverStored(http.CanonicalHeaderKey(k)) {
			continue
		}
		dst[k] = append(dst[k], vs...)
	}
}
