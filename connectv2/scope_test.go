package connectv2_test

import (
	"context"
	"net/http"
	"sync/atomic"
	"testing"

	"connectrpc.com/connect/v2"
	"connectrpc.com/connect/v2/connectinprocess"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/idemkey/idempotency"
	"github.com/idemkey/idempotency/connectv2"
	"github.com/idemkey/idempotency/internal/adaptertest"
	"github.com/idemkey/idempotency/internal/gen/connectv2/idemkey/payments/v1/paymentsv1connect"
	paymentsv1 "github.com/idemkey/idempotency/internal/gen/idemkey/payments/v1"
	"github.com/idemkey/idempotency/store/memory"
)

// TestServerInterceptorKeyScope: under WithKeyScope, one key from two
// tenants is two requests; from one tenant, one.
func TestServerInterceptorKeyScope(t *testing.T) {
	t.Parallel()
	var runs int
	server := connect.NewServer(connectv2.NewServerInterceptor(memory.New(), quiet,
		idempotency.WithKeyScope(func(_ context.Context, h http.Header) string { return h.Get("X-Tenant") })))
	paymentsv1connect.RegisterPaymentServiceHandler(server, &service{charge: func(ctx context.Context, req *paymentsv1.ChargeRequest, md adaptertest.Metadata) (*paymentsv1.ChargeResponse, error) {
		runs++
		return adaptertest.Charge(ctx, req, md)
	}})
	client := paymentsv1connect.NewPaymentServiceClient(connect.NewClient(connectinprocess.New(server)))
	call := func(tenant string) bool {
		ctx, info := connect.NewClientContext(t.Context())
		info.RequestHeader().Set(idempotency.DefaultIdempotencyHeader, "same-key")
		info.RequestHeader().Set("X-Tenant", tenant)
		_, err := client.Charge(ctx, adaptertest.Request("acct"))
		require.NoError(t, err)
		return info.ResponseHeader().Get(idempotency.DefaultReplayHeader) == "true"
	}
	assert.False(t, call("a"))
	assert.False(t, call("b"), "another tenant's key")
	assert.True(t, call("a"))
	assert.Equal(t, 2, runs)
}

// streams answers WatchCharges with one message.
type streams struct {
	service
	runs atomic.Int64
}

func (s *streams) WatchCharges(_ context.Context, req *paymentsv1.WatchChargesRequest, stream paymentsv1connect.PaymentServiceWatchChargesServerStream) error {
	s.runs.Add(1)
	return stream.Send(&paymentsv1.WatchChargesResponse{Charge: &paymentsv1.ChargeResponse{ChargeId: "ch_" + req.GetAccountId()}})
}

// TestStreamsPassThrough: streaming calls reach neither the store (it is
// down here) nor the client's retries, key or not.
func TestStreamsPassThrough(t *testing.T) {
	t.Parallel()
	svc := &streams{}
	log := newKeyLog()
	server := connect.NewServer(log.intercept, connectv2.NewServerInterceptor(downStore{}, quiet))
	paymentsv1connect.RegisterPaymentServiceHandler(server, svc)
	for p, client := range retryingClients(t, server) {
		ctx, info := connect.NewClientContext(t.Context())
		info.RequestHeader().Set(idempotency.DefaultIdempotencyHeader, "stream-key")
		stream, err := client.WatchCharges(ctx, &paymentsv1.WatchChargesRequest{AccountId: "acct"})
		require.NoError(t, err, p)
		msg, err := stream.Receive()
		require.NoError(t, err, p)
		assert.Equal(t, "ch_acct", msg.GetCharge().GetChargeId(), p)
		require.NoError(t, stream.Close())
	}
	assert.Equal(t, int64(len(v2Adapter.Protocols)), svc.runs.Load())
	for _, k := range log.all() {
		assert.Equal(t, "stream-key", k, "the caller's key, no other")
	}
}

// tamperingStream edits every response after sending it, and the headers
// it was sent with.
type tamperingStream struct {
	connect.ServerStream
	info *connect.CallInfo
}

func (s tamperingStream) Send(msg any) error {
	err := s.ServerStream.Send(msg)
	if m, ok := msg.(*paymentsv1.ChargeResponse); ok {
		m.Status = "tampered"
	}
	for _, vs := range s.info.ResponseHeader().All() {
		for i := range vs {
			vs[i] = "tampered"
		}
	}
	return err
}

// TestReplaysShareNothing: an outer interceptor that edits what a replay
// sent changes nothing that a later replay sends.
func TestReplaysShareNothing(t *testing.T) {
	t.Parallel()
	tamper := func(next connect.ServerFunc) connect.ServerFunc {
		return func(ctx context.Context, spec connect.Spec, stream connect.ServerStream) error {
			info, _ := connect.CallInfoForServerContext(ctx)
			return next(ctx, spec, tamperingStream{ServerStream: stream, info: info})
		}
	}
	srv := startV2(t, &service{charge: adaptertest.Charge}, tamper, connectv2.NewServerInterceptor(memory.New(), quiet))
	for _, p := range []string{"connect+proto", "grpc"} {
		var results []adaptertest.Result
		for range 3 {
			res := srv.Call(t.Context(), p, []string{"key-" + p}, adaptertest.Request("acct"))
			require.Nil(t, res.Err, p)
			results = append(results, res)
		}
		for i, res := range results {
			assert.Equal(t, "succeeded", res.Msg.GetStatus(), "%s call %d", p, i)
			assert.Equal(t, "ch_acct", res.Header.Get("X-Charge-Id"), "%s call %d", p, i)
		}
		assert.Equal(t, results[1].Header.Values("X-Multi"), results[2].Header.Values("X-Multi"), p)
		assert.Equal(t, "true", results[2].Header.Get(idempotency.DefaultReplayHeader), p)
	}
}
