package grpcmw_test

import (
	"context"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/idemkey/idempotency"
	gatewayv1 "github.com/idemkey/idempotency/internal/gen/idemkey/gateway/v1"
	"github.com/idemkey/idempotency/store/memory"
)

// restResponse is what a REST client sees.
type restResponse struct {
	status int
	header http.Header
	body   string
}

func post(t *testing.T, url, key, body string) restResponse {
	t.Helper()
	res, err := send(t.Context(), url, key, body)
	require.NoError(t, err)
	return res
}

// send posts a charge; it may run off the test's goroutine.
func send(ctx context.Context, url, key, body string) (restResponse, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url+"/v1/charges", strings.NewReader(body))
	if err != nil {
		return restResponse{}, err
	}
	req.Header.Set("Content-Type", "application/json")
	if key != "" {
		req.Header.Set("Idempotency-Key", key)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		return restResponse{}, err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	return restResponse{res.StatusCode, res.Header, string(b)}, err
}

// countingCharges answers CreateCharge with a charge numbered by call.
func countingCharges(calls *atomic.Int64) *chargeServer {
	return &chargeServer{create: func(_ context.Context, req *gatewayv1.CreateChargeRequest) (*gatewayv1.CreateChargeResponse, error) {
		n := calls.Add(1)
		return created(&gatewayv1.Charge{Id: "ch_" + string(rune('0'+n)), AccountId: req.GetAccountId(), AmountCents: req.GetAmountCents(), Currency: req.GetCurrency(), Status: "succeeded"}), nil
	}}
}

func TestGatewayReplay(t *testing.T) { //nolint:tparallel // the subtests share one key and run in order
	t.Parallel()
	var calls atomic.Int64
	url := startGateway(t, startGRPC(t, countingCharges(&calls), memory.New()))

	first := post(t, url, "key-1", `{"accountId":"acct_1","amountCents":"1200","currency":"EUR"}`)
	require.Equal(t, http.StatusOK, first.status, first.body)
	assert.Empty(t, first.header.Get("Idempotent-Replayed"))

	tests := []struct {
		name string
		body string
	}{
		{"same body", `{"accountId":"acct_1","amountCents":"1200","currency":"EUR"}`},
		{"fields in another order", `{"currency":"EUR","amountCents":1200,"accountId":"acct_1"}`},
		{"proto field names", `{"account_id":"acct_1","currency":"EUR","amount_cents":"1200"}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := post(t, url, "key-1", tt.body)
			assert.Equal(t, http.StatusOK, got.status)
			assert.Equal(t, "true", got.header.Get("Idempotent-Replayed"))
			assert.JSONEq(t, first.body, got.body)
		})
	}
	assert.Equal(t, int64(1), calls.Load(), "the handler ran once")
}

func TestGatewayMismatch(t *testing.T) {
	t.Parallel()
	var calls atomic.Int64
	url := startGateway(t, startGRPC(t, countingCharges(&calls), memory.New()))

	require.Equal(t, http.StatusOK, post(t, url, "key-1", `{"accountId":"acct_1","amountCents":"1200"}`).status)
	got := post(t, url, "key-1", `{"accountId":"acct_1","amountCents":"9900"}`)
	// The gateway answers InvalidArgument with 400.
	assert.Equal(t, http.StatusBadRequest, got.status)
	assert.Equal(t, idempotency.StatusMismatch, got.header.Get("Idempotency-Status"))
	assert.Contains(t, got.body, "already used for a different request")
	assert.Empty(t, got.header.Get("Idempotent-Replayed"))
	assert.Equal(t, int64(1), calls.Load())
}

func TestGatewayInFlight(t *testing.T) {
	t.Parallel()
	started, release := make(chan struct{}), make(chan struct{})
	srv := &chargeServer{create: func(context.Context, *gatewayv1.CreateChargeRequest) (*gatewayv1.CreateChargeResponse, error) {
		close(started)
		<-release
		return created(&gatewayv1.Charge{Id: "ch_1"}), nil
	}}
	url := startGateway(t, startGRPC(t, srv, memory.New()))

	done := make(chan restResponse, 1)
	go func() {
		res, err := send(t.Context(), url, "key-1", `{"accountId":"acct_1"}`)
		assert.NoError(t, err)
		done <- res
	}()
	<-started
	got := post(t, url, "key-1", `{"accountId":"acct_1"}`)
	close(release)
	assert.Equal(t, http.StatusConflict, got.status, "the gateway answers Aborted with 409")
	assert.Equal(t, idempotency.StatusInFlight, got.header.Get("Idempotency-Status"))
	assert.Equal(t, "1", got.header.Get("Retry-After"))
	assert.Equal(t, http.StatusOK, (<-done).status)
}

func TestGatewayErrorReplay(t *testing.T) {
	t.Parallel()
	var calls atomic.Int64
	srv := &chargeServer{create: func(context.Context, *gatewayv1.CreateChargeRequest) (*gatewayv1.CreateChargeResponse, error) {
		calls.Add(1)
		st, err := status.New(codes.FailedPrecondition, "card declined").WithDetails(
			&errdetails.ErrorInfo{Reason: "CARD_DECLINED", Domain: "payments.example", Metadata: map[string]string{"b": "2", "a": "1"}})
		require.NoError(t, err)
		return nil, st.Err()
	}}
	url := startGateway(t, startGRPC(t, srv, memory.New()))

	first := post(t, url, "key-1", `{"accountId":"acct_1"}`)
	require.Equal(t, http.StatusBadRequest, first.status, first.body)
	require.Contains(t, first.body, "CARD_DECLINED")
	got := post(t, url, "key-1", `{"accountId":"acct_1"}`)
	assert.Equal(t, first.status, got.status)
	assert.Equal(t, first.body, got.body, "the same error JSON, byte for byte")
	assert.Equal(t, "true", got.header.Get("Idempotent-Replayed"))
	assert.Equal(t, int64(1), calls.Load())
}

func TestGatewayWithoutKeyRunsEveryTime(t *testing.T) {
	t.Parallel()
	var calls atomic.Int64
	url := startGateway(t, startGRPC(t, countingCharges(&calls), memory.New()))
	for range 2 {
		got := post(t, url, "", `{"accountId":"acct_1"}`)
		require.Equal(t, http.StatusOK, got.status)
		assert.Empty(t, got.header.Get("Idempotent-Replayed"))
	}
	assert.Equal(t, int64(2), calls.Load())
}
