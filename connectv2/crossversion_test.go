package connectv2_test

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"

	connectv1 "connectrpc.com/connect"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	"github.com/idemkey/idempotency"
	"github.com/idemkey/idempotency/connectv2"
	"github.com/idemkey/idempotency/internal/adaptertest"
	paymentsv1 "github.com/idemkey/idempotency/internal/gen/idemkey/payments/v1"
	v1connect "github.com/idemkey/idempotency/internal/gen/idemkey/payments/v1/paymentsv1connect"
	"github.com/idemkey/idempotency/store/memory"
)

// v1Protocols are the connect-go v1 client options for the protocols that
// both versions speak.
var v1Protocols = map[string][]connectv1.ClientOption{
	"connect+proto": nil,
	"connect+json":  {connectv1.WithProtoJSON()},
	"grpc":          {connectv1.WithGRPC()},
	"grpcweb":       {connectv1.WithGRPCWeb()},
}

// callV1 calls Charge with a connect-go v1 client.
func callV1(ctx context.Context, s *v2Server, protocol, key string, msg *paymentsv1.ChargeRequest) adaptertest.Result {
	client := v1connect.NewPaymentServiceClient(s.httpClient, s.url, v1Protocols[protocol]...)
	req := connectv1.NewRequest(msg)
	req.Header().Set(idempotency.DefaultIdempotencyHeader, key)
	res, err := client.Charge(ctx, req)
	if err != nil {
		r := adaptertest.Result{Err: &adaptertest.RPCError{Code: uint32(connectv1.CodeOf(err))}, Header: http.Header{}, Trailer: http.Header{}}
		if ce, ok := errors.AsType[*connectv1.Error](err); ok {
			r.Err.Message = ce.Message()
			r.Header = ce.Meta()
			for _, d := range ce.Details() {
				r.Err.Details = append(r.Err.Details, adaptertest.Detail{Type: d.Type(), Value: d.Bytes()})
			}
		}
		return r
	}
	return adaptertest.Result{Msg: res.Msg, Header: res.Header(), Trailer: res.Trailer()}
}

var quiet = idempotency.WithLogger(slog.New(slog.DiscardHandler))

// merged is a result's headers and trailers in one, as connect-go v1
// reports an error's metadata.
func merged(r adaptertest.Result) adaptertest.Result {
	h := r.Header.Clone()
	for k, vs := range r.Trailer {
		h[k] = append(h[k], vs...)
	}
	r.Header, r.Trailer = h, http.Header{}
	return r
}

// TestCrossVersionReplays: a connect-go v2 client and a v1 client calling one
// v2 server get the same replay, on every protocol and codec, and a v2
// client in process too; the handler ran once for each key.
func TestCrossVersionReplays(t *testing.T) {
	t.Parallel()
	detail := adaptertest.Detail{Type: "idemkey.payments.v1.RefundResponse", Value: []byte{0x0a, 0x02, 'n', 'o'}}
	handlers := map[string]adaptertest.Handler{
		"response": adaptertest.Charge,
		"error": func(_ context.Context, _ *paymentsv1.ChargeRequest, md adaptertest.Metadata) (*paymentsv1.ChargeResponse, error) {
			md.SetHeader("X-Reason", "funds")
			return nil, &adaptertest.RPCError{Code: adaptertest.CodeFailedPrecondition, Message: "insufficient funds", Details: []adaptertest.Detail{detail}}
		},
	}
	for name, h := range handlers {
		for p := range v1Protocols {
			t.Run(name+"/"+p, func(t *testing.T) {
				t.Parallel()
				var runs atomic.Int64
				srv := startV2(t, &service{charge: func(ctx context.Context, req *paymentsv1.ChargeRequest, md adaptertest.Metadata) (*paymentsv1.ChargeResponse, error) {
					runs.Add(1)
					return h(ctx, req, md)
				}}, connectv2.NewServerInterceptor(memory.New(), quiet))
				first := srv.Call(t.Context(), p, []string{"key"}, adaptertest.Request("acct"))
				v2 := srv.Call(t.Context(), p, []string{"key"}, adaptertest.Request("acct"))
				inprocess := srv.Call(t.Context(), "inprocess", []string{"key"}, adaptertest.Request("acct"))
				v1 := callV1(t.Context(), srv, p, "key", adaptertest.Request("acct"))

				assert.Equal(t, int64(1), runs.Load(), "handler runs")
				adaptertest.SameAnswer(t, first, v2, idempotency.DefaultReplayHeader)
				if first.Err != nil {
					// connect-go v1 merges an error's headers and trailers.
					adaptertest.SameAnswer(t, merged(first), v1, idempotency.DefaultReplayHeader)
				} else {
					adaptertest.SameAnswer(t, first, v1, idempotency.DefaultReplayHeader)
				}
				// In process there are no protocol headers to compare; the
				// answer and the handler's metadata are the same.
				require.Equal(t, first.Err, inprocess.Err)
				assert.True(t, proto.Equal(first.Msg, inprocess.Msg), "in process: %v", inprocess.Msg)
				assert.Equal(t, "true", inprocess.Meta(idempotency.DefaultReplayHeader))
				for _, k := range []string{"X-Charge-Id", "X-Raw", "X-Reason"} {
					assert.Equal(t, first.Meta(k), inprocess.Meta(k), k)
				}
			})
		}
	}
}

// v1Payments is the payments service on connect-go v1, answering Charge
// with an error whose metadata is its own, apart from the headers set in
// the call info.
type v1Payments struct {
	v1connect.UnimplementedPaymentServiceHandler
	runs atomic.Int64
}

func (s *v1Payments) Charge(ctx context.Context, _ *connectv1.Request[paymentsv1.ChargeRequest]) (*connectv1.Response[paymentsv1.ChargeResponse], error) {
	s.runs.Add(1)
	info, _ := connectv1.CallInfoForHandlerContext(ctx)
	info.ResponseHeader().Set("X-Reason", "funds")
	ce := connectv1.NewError(connectv1.CodeFailedPrecondition, errors.New("insufficient funds"))
	ce.Meta().Set("X-Error-Meta", "m")
	return nil, ce
}

// TestMigrationSharesTheStore: a v1 server and a v2 server over one store,
// as during a migration: what the v1 server answered, the v2 server
// replays, the v1 error's own metadata where a v1 server sends it, and the
// other way round.
//
// The protocols run in turn, on one store and one pair of servers.
func TestMigrationSharesTheStore(t *testing.T) {
	store := memory.New()
	v1svc := &v1Payments{}
	mux := http.NewServeMux()
	mux.Handle(v1connect.NewPaymentServiceHandler(v1svc, connectv1.WithInterceptors(idempotency.NewInterceptor(store, quiet))))
	v1srv := httptest.NewUnstartedServer(mux)
	v1srv.EnableHTTP2 = true
	v1srv.StartTLS()
	t.Cleanup(v1srv.Close)
	var v2runs atomic.Int64
	v2srv := startV2(t, &service{charge: func(ctx context.Context, req *paymentsv1.ChargeRequest, md adaptertest.Metadata) (*paymentsv1.ChargeResponse, error) {
		v2runs.Add(1)
		return adaptertest.Charge(ctx, req, md)
	}}, connectv2.NewServerInterceptor(store, quiet))
	// callV1 takes the server to call from a v2Server's address.
	v1At := &v2Server{url: v1srv.URL, httpClient: v1srv.Client()}

	for p := range v1Protocols {
		t.Run(p, func(t *testing.T) {
			// A v1 answer, replayed by v2.
			first := callV1(t.Context(), v1At, p, "from-v1-"+p, adaptertest.Request("acct"))
			require.NotNil(t, first.Err)
			replay := v2srv.Call(t.Context(), p, []string{"from-v1-" + p}, adaptertest.Request("acct"))
			require.NotNil(t, replay.Err)
			assert.Equal(t, *first.Err, *replay.Err)
			assert.Equal(t, "true", replay.Meta(idempotency.DefaultReplayHeader))
			assert.Equal(t, "funds", replay.Meta("X-Reason"))
			if p == "grpc" || p == "grpcweb" {
				assert.Equal(t, "m", replay.Trailer.Get("X-Error-Meta"), "a v1 error's metadata is a trailer on gRPC")
			} else {
				assert.Equal(t, "m", replay.Header.Get("X-Error-Meta"), "a v1 error's metadata is a header on Connect")
			}
			// A v2 answer, replayed by v1.
			v2first := v2srv.Call(t.Context(), p, []string{"from-v2-" + p}, adaptertest.Request("acct"))
			require.Nil(t, v2first.Err)
			v1replay := callV1(t.Context(), v1At, p, "from-v2-"+p, adaptertest.Request("acct"))
			adaptertest.SameAnswer(t, v2first, v1replay, idempotency.DefaultReplayHeader)
		})
	}
	assert.Equal(t, int64(len(v1Protocols)), v1svc.runs.Load(), "v1 handler runs")
	assert.Equal(t, int64(len(v1Protocols)), v2runs.Load(), "v2 handler runs")
}
