package grpcmw_test

import (
	"context"
	"net/http/httptest"
	"sync/atomic"
	"testing"

	"connectrpc.com/connect"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/proto"

	"github.com/idemkey/idempotency"
	"github.com/idemkey/idempotency/grpcmw"
	paymentsv1 "github.com/idemkey/idempotency/internal/gen/idemkey/payments/v1"
	"github.com/idemkey/idempotency/internal/gen/idemkey/payments/v1/paymentsv1connect"
	"github.com/idemkey/idempotency/store/memory"
)

type connectCharges struct {
	paymentsv1connect.UnimplementedPaymentServiceHandler
	calls *atomic.Int64
}

func (c connectCharges) Charge(_ context.Context, req *connect.Request[paymentsv1.ChargeRequest]) (*connect.Response[paymentsv1.ChargeResponse], error) {
	c.calls.Add(1)
	res := connect.NewResponse(&paymentsv1.ChargeResponse{ChargeId: "ch_connect", AmountCents: req.Msg.GetAmountCents()})
	res.Header().Set("X-Charge", "connect")
	return res, nil
}

type grpcCharges struct {
	paymentsv1.UnimplementedPaymentServiceServer
	calls *atomic.Int64
}

func (g grpcCharges) Charge(context.Context, *paymentsv1.ChargeRequest) (*paymentsv1.ChargeResponse, error) {
	g.calls.Add(1)
	return &paymentsv1.ChargeResponse{ChargeId: "ch_grpc"}, nil
}

// TestConnectRecordReplaysOverGRPC: a Connect server and a grpc-go server
// that share a store are one service to a key.
func TestConnectRecordReplaysOverGRPC(t *testing.T) {
	t.Parallel()
	store := memory.New()
	var calls atomic.Int64

	_, h := paymentsv1connect.NewPaymentServiceHandler(connectCharges{calls: &calls},
		connect.WithInterceptors(idempotency.NewInterceptor(store)))
	hs := httptest.NewServer(h)
	t.Cleanup(hs.Close)
	creq := connect.NewRequest(&paymentsv1.ChargeRequest{AccountId: "acct_1", AmountCents: 700})
	creq.Header().Set("Idempotency-Key", "shared-key")
	first, err := paymentsv1connect.NewPaymentServiceClient(hs.Client(), hs.URL).Charge(t.Context(), creq)
	require.NoError(t, err)

	lis := bufconn.Listen(1 << 20)
	s := grpc.NewServer(grpc.ChainUnaryInterceptor(grpcmw.UnaryServerInterceptor(store)))
	paymentsv1.RegisterPaymentServiceServer(s, grpcCharges{calls: &calls})
	go func() { _ = s.Serve(lis) }()
	t.Cleanup(s.Stop)
	ctx := metadata.AppendToOutgoingContext(t.Context(), "idempotency-key", "shared-key")
	var header metadata.MD
	got, err := paymentsv1.NewPaymentServiceClient(dialBuf(t, lis)).Charge(ctx,
		&paymentsv1.ChargeRequest{AmountCents: 700, AccountId: "acct_1"}, grpc.Header(&header))
	require.NoError(t, err)
	assert.True(t, proto.Equal(first.Msg, got), "the Connect answer, replayed over gRPC")
	assert.Equal(t, []string{"connect"}, header.Get("x-charge"))
	assert.Equal(t, []string{"true"}, header.Get("idempotent-replayed"))
	assert.Equal(t, int64(1), calls.Load())
}
