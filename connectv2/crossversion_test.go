package connectv2_test

import (
	"context"
	"log/slog"
	"net/http"
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
		r := adaptertest.Result{Err: &adaptertest.Failure{Code: uint32(connectv1.CodeOf(err))}, Header: http.Header{}, Trailer: http.Header{}}
		if ce, ok := err.(*connectv1.Error); ok {
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
			return nil, &adaptertest.Failure{Code: adaptertest.CodeFailedPrecondition, Message: "insufficient funds", Details: []adaptertest.Detail{detail}}
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
