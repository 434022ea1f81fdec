package pgstore_test

import (
	"context"
	"crypto/rand"
	"net"
	"strconv"
	"sync/atomic"
	"testing"

	connectv2 "connectrpc.com/connect/v2"
	"connectrpc.com/connect/v2/connectinprocess"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	"github.com/idemkey/idempotency"
	idemv2 "github.com/idemkey/idempotency/connectv2"
	"github.com/idemkey/idempotency/grpcmw"
	paymentsv2connect "github.com/idemkey/idempotency/internal/gen/connectv2/idemkey/payments/v1/paymentsv1connect"
	paymentsv1 "github.com/idemkey/idempotency/internal/gen/idemkey/payments/v1"
)

// ledgerCharges is a PaymentService for grpc-go and connect-go v2 whose
// Charge writes to the ledger through pgstore.Tx, its only contact with the
// library; the first call of each order panics after its write when
// panicFirst is set.
type ledgerCharges struct {
	ledger     *ledger
	writer     string
	panicFirst bool
	panicked   atomic.Bool
}

func (c *ledgerCharges) Charge(ctx context.Context, req *paymentsv1.ChargeRequest) (*paymentsv1.ChargeResponse, error) {
	id, err := c.ledger.charge(ctx, req.GetMetadata()["order"], c.writer)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	if c.panicFirst && !c.panicked.Swap(true) {
		panic("after the write")
	}
	return &paymentsv1.ChargeResponse{ChargeId: strconv.FormatInt(id, 10)}, nil
}

// grpcLedger and v2Ledger serve ledgerCharges through grpc-go and
// connect-go v2.
type grpcLedger struct {
	paymentsv1.UnimplementedPaymentServiceServer
	c *ledgerCharges
}

func (g grpcLedger) Charge(ctx context.Context, req *paymentsv1.ChargeRequest) (*paymentsv1.ChargeResponse, error) {
	return g.c.Charge(ctx, req)
}

type v2Ledger struct {
	paymentsv2connect.UnimplementedPaymentServiceHandler
	c *ledgerCharges
}

func (v v2Ledger) Charge(ctx context.Context, req *paymentsv1.ChargeRequest) (*paymentsv1.ChargeResponse, error) {
	return v.c.Charge(ctx, req)
}

// rpcCharge sends a charge for order with key through one RPC adapter and
// returns its ID and whether it was a replay.
type rpcCharge func(t *testing.T, key, order string) (id string, replayed bool, err error)

func grpcCharges(t *testing.T, svc *ledgerCharges, store idempotency.Store) rpcCharge {
	t.Helper()
	lis := bufconn.Listen(1 << 20)
	s := grpc.NewServer(grpc.ChainUnaryInterceptor(
		// A panic that a recovery interceptor outside turns into an error,
		// as services do.
		func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (res any, err error) {
			defer func() {
				if recover() != nil {
					err = status.Error(codes.Internal, "panic")
				}
			}()
			return h(ctx, req)
		},
		grpcmw.UnaryServerInterceptor(store, quiet)))
	paymentsv1.RegisterPaymentServiceServer(s, grpcLedger{c: svc})
	go func() { _ = s.Serve(lis) }()
	t.Cleanup(s.Stop)
	conn, err := grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(context.Context, string) (net.Conn, error) { return lis.Dial() }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	client := paymentsv1.NewPaymentServiceClient(conn)
	return func(t *testing.T, key, order string) (string, bool, error) {
		ctx := metadata.AppendToOutgoingContext(t.Context(), "idempotency-key", key)
		var header metadata.MD
		res, err := client.Charge(ctx, &paymentsv1.ChargeRequest{AccountId: "acct", AmountCents: 100,
			Metadata: map[string]string{"order": order}}, grpc.Header(&header))
		replayed := len(header.Get("idempotent-replayed")) > 0
		return res.GetChargeId(), replayed, err
	}
}

func connectV2Charges(t *testing.T, svc *ledgerCharges, store idempotency.Store) rpcCharge {
	t.Helper()
	recoverer := func(next connectv2.ServerFunc) connectv2.ServerFunc {
		return func(ctx context.Context, spec connectv2.Spec, stream connectv2.ServerStream) (err error) {
			defer func() {
				if recover() != nil {
					err = connectv2.NewError(connectv2.CodeInternal, "panic")
				}
			}()
			return next(ctx, spec, stream)
		}
	}
	server := connectv2.NewServer(recoverer, idemv2.NewServerInterceptor(store, quiet))
	paymentsv2connect.RegisterPaymentServiceHandler(server, v2Ledger{c: svc})
	client := paymentsv2connect.NewPaymentServiceClient(connectv2.NewClient(connectinprocess.New(server)))
	return func(t *testing.T, key, order string) (string, bool, error) {
		ctx, info := connectv2.NewClientContext(t.Context())
		info.RequestHeader().Set(idempotency.DefaultIdempotencyHeader, key)
		res, err := client.Charge(ctx, &paymentsv1.ChargeRequest{AccountId: "acct", AmountCents: 100,
			Metadata: map[string]string{"order": order}})
		replayed := info.ResponseHeader().Get(idempotency.DefaultReplayHeader) == "true"
		return res.GetChargeId(), replayed, err
	}
}

// TestRPCAdaptersCommitInTx checks SPEC §8.5 behind grpcmw and connectv2: a
// handler that writes through pgstore.Tx with no other call to the library
// commits once and is replayed; a panic after its write rolls the write
// back, and the retry runs on clean data.
func TestRPCAdaptersCommitInTx(t *testing.T) {
	t.Parallel()
	pool := newPool(t, nil)
	store := newStore(t, pool)
	l := newLedger(t, pool)
	for _, adapter := range []struct {
		name  string
		start func(*testing.T, *ledgerCharges, idempotency.Store) rpcCharge
	}{
		{"grpcmw", grpcCharges},
		{"connectv2", connectV2Charges},
	} {
		t.Run(adapter.name+"/stored", func(t *testing.T) {
			t.Parallel()
			charge := adapter.start(t, &ledgerCharges{ledger: l, writer: adapter.name}, store)
			key, order := rand.Text(), rand.Text()
			first, replayed, err := charge(t, key, order)
			require.NoError(t, err)
			assert.False(t, replayed)
			again, replayed, err := charge(t, key, order)
			require.NoError(t, err)
			assert.True(t, replayed, "the retry is a replay")
			assert.Equal(t, first, again)
			assert.Equal(t, []string{adapter.name}, l.writers(t, order))
		})
		t.Run(adapter.name+"/panic rolls back", func(t *testing.T) {
			t.Parallel()
			charge := adapter.start(t, &ledgerCharges{ledger: l, writer: adapter.name, panicFirst: true}, store)
			key, order := rand.Text(), rand.Text()
			_, _, err := charge(t, key, order)
			require.Error(t, err)
			assert.Empty(t, l.writers(t, order), "the panicking call's write committed")
			_, replayed, err := charge(t, key, order)
			require.NoError(t, err, "the retry runs")
			assert.False(t, replayed)
			assert.Equal(t, []string{adapter.name}, l.writers(t, order), "only the retry's write is committed")
		})
	}
}
