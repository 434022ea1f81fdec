package idempotency_test

import (
	"context"
	"errors"
	"net/http"
	"testing"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/idemkey/idempotency"
	"github.com/idemkey/idempotency/internal/adaptertest"
	paymentsv1 "github.com/idemkey/idempotency/internal/gen/idemkey/payments/v1"
	"github.com/idemkey/idempotency/internal/gen/idemkey/payments/v1/paymentsv1connect"
)

// The behaviour suite that every RPC adapter runs (internal/adaptertest),
// against the Connect v1 interceptor. Package connectv2 runs the same table
// against the v2 interceptor.

// v1Adapter starts Connect v1 servers for the suites of internal/adaptertest.
var v1Adapter = adaptertest.Adapter{
	Name:      "connect-go v1",
	Protocols: []string{"connect+json", "connect+proto", "grpc", "grpcweb"},
	Start: func(t *testing.T, h adaptertest.Handler, store idempotency.Store, opts ...idempotency.Option) adaptertest.Server {
		svc := &paymentServer{charge: v1Charge(h)}
		clients := startServer(t, svc, connect.WithInterceptors(idempotency.NewInterceptor(store, opts...)))
		return v1Clients{
			"connect+json":  clients(connect.WithProtoJSON()),
			"connect+proto": clients(),
			"grpc":          clients(connect.WithGRPC()),
			"grpcweb":       clients(connect.WithGRPCWeb()),
		}
	},
}

func TestInterceptorBehaviour(t *testing.T) {
	t.Parallel()
	adaptertest.Run(t, v1Adapter)
}

func TestInterceptorObservability(t *testing.T) {
	t.Parallel()
	adaptertest.RunObservability(t, v1Adapter)
}

// v1Charge runs a framework-neutral handler as a v1 Charge.
func v1Charge(h adaptertest.Handler) func(context.Context, *connect.Request[paymentsv1.ChargeRequest]) (*connect.Response[paymentsv1.ChargeResponse], error) {
	return func(ctx context.Context, req *connect.Request[paymentsv1.ChargeRequest]) (*connect.Response[paymentsv1.ChargeResponse], error) {
		info, _ := connect.CallInfoForHandlerContext(ctx)
		msg, err := h(ctx, req.Msg, v1Metadata{info})
		if f, ok := errors.AsType[*adaptertest.RPCError](err); ok {
			ce := connect.NewError(connect.Code(f.Code), errors.New(f.Message))
			for _, d := range f.Details {
				detail, derr := connect.NewErrorDetail(&anypb.Any{TypeUrl: "type.googleapis.com/" + d.Type, Value: d.Value})
				if derr != nil {
					return nil, derr
				}
				ce.AddDetail(detail)
			}
			return nil, ce
		}
		if err != nil {
			return nil, err
		}
		return connect.NewResponse(msg), nil
	}
}

// v1Metadata sets response metadata in a v1 call info.
type v1Metadata struct{ info connect.CallInfo }

func (m v1Metadata) SetHeader(key string, values ...string) {
	m.info.ResponseHeader()[http.CanonicalHeaderKey(key)] = values
}

func (m v1Metadata) SetTrailer(key string, values ...string) {
	m.info.ResponseTrailer()[http.CanonicalHeaderKey(key)] = values
}

// v1Clients calls a v1 server with a client per protocol.
type v1Clients map[string]paymentsv1connect.PaymentServiceClient

func (c v1Clients) Call(ctx context.Context, protocol string, keys []string, msg *paymentsv1.ChargeRequest) adaptertest.Result {
	req := connect.NewRequest(msg)
	for _, k := range keys {
		req.Header().Add(idempotency.DefaultIdempotencyHeader, k)
	}
	res, err := c[protocol].Charge(ctx, req)
	if err != nil {
		r := adaptertest.Result{Err: &adaptertest.RPCError{Code: uint32(connect.CodeOf(err))}, Header: http.Header{}, Trailer: http.Header{}}
		if ce, ok := errors.AsType[*connect.Error](err); ok {
			r.Err.Message = ce.Message()
			// connect-go v1 merges an error's headers and trailers into its
			// metadata.
			r.Header = ce.Meta()
			for _, d := range ce.Details() {
				r.Err.Details = append(r.Err.Details, adaptertest.Detail{Type: d.Type(), Value: d.Bytes()})
			}
		}
		return r
	}
	return adaptertest.Result{Msg: res.Msg, Header: res.Header(), Trailer: res.Trailer()}
}
