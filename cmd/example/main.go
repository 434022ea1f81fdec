// Command example runs a small payments service with both adapters of the
// idempotency library: a Connect service (Charge is guarded; GetCharge and
// Refund are safe to retry and pass through) and a plain net/http endpoint
// (POST /orders). It uses the in-memory store, or Redis when REDIS_ADDR or
// REDIS_URL is set, so that several instances can share one store. Its
// OpenTelemetry metrics are served in the Prometheus format on GET /metrics.
//
//	go run ./cmd/example             # serve on 127.0.0.1:8080
//	go run ./cmd/example -addr :9090
//	go run ./cmd/example -client     # a client retry after a lost answer
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
	"time"

	"connectrpc.com/connect"
	"connectrpc.com/grpcreflect"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/idemkey/idempotency"
	"github.com/idemkey/idempotency/httpmw"
	paymentsv1 "github.com/idemkey/idempotency/internal/gen/idemkey/payments/v1"
	"github.com/idemkey/idempotency/internal/gen/idemkey/payments/v1/paymentsv1connect"
	"github.com/idemkey/idempotency/store/memory"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:8080", "address to listen on")
	client := flag.Bool("client", false, "show a client's retry after a lost answer, then exit")
	flag.Parse()
	logger := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if *client {
		if err := runClientDemo(os.Stdout, logger); err != nil {
			logger.Error("client demo failed", "error", err)
			os.Exit(1)
		}
		return
	}
	if err := run(*addr, logger); err != nil {
		logger.Error("example stopped", "error", err)
		os.Exit(1)
	}
}

func run(addr string, logger *slog.Logger) error {
	store, storeName, closeStore, err := openStore(logger)
	if err != nil {
		return err
	}
	defer closeStore()

	metrics, shutdownMetrics, err := setUpMetrics()
	if err != nil {
		return err
	}
	defer func() { _ = shutdownMetrics(context.Background()) }()
	mux := newMux(store, logger, metrics)

	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	var protocols http.Protocols
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true) // gRPC clients over plain TCP
	srv := &http.Server{Handler: mux, Protocols: &protocols, ReadHeaderTimeout: 10 * time.Second}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdown)
	}()
	printHelp(os.Stdout, "http://"+ln.Addr().String(), storeName)
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// newMux returns the service's routes, with metrics serving GET /metrics.
// httpmw is mounted inside the mux, so that its metrics name the route by
// the pattern that matched ("POST /orders"), not by the path as sent.
func newMux(store idempotency.Store, logger *slog.Logger, metrics http.Handler) *http.ServeMux {
	opts := []idempotency.Option{idempotency.WithLogger(logger)}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", metrics)
	mux.Handle(paymentsv1connect.NewPaymentServiceHandler(&payments{},
		connect.WithInterceptors(idempotency.NewInterceptor(store, opts...)),
	))
	mux.Handle("POST /orders", httpmw.New(store, opts...)(http.HandlerFunc(createOrder)))
	// gRPC server reflection, so that tools such as buf curl and grpcurl
	// find the schema without being given it.
	reflector := grpcreflect.NewStaticReflector(paymentsv1connect.PaymentServiceName)
	mux.Handle(grpcreflect.NewHandlerV1(reflector))
	mux.Handle(grpcreflect.NewHandlerV1Alpha(reflector))

	return mux
}

// payments is the Connect service. Charge sleeps for the duration in the
// request's "delay" metadata entry, to make a concurrent duplicate easy to
// produce by hand.
type payments struct {
	paymentsv1connect.UnimplementedPaymentServiceHandler
	charges atomic.Int64
}

func (p *payments) Charge(ctx context.Context, req *connect.Request[paymentsv1.ChargeRequest]) (*connect.Response[paymentsv1.ChargeResponse], error) {
	if err := delay(ctx, req.Msg.GetMetadata()["delay"]); err != nil {
		return nil, err
	}
	if req.Msg.GetAmountCents() <= 0 {
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("amount_cents must be positive"))
	}
	n := p.charges.Add(1)
	res := connect.NewResponse(&paymentsv1.ChargeResponse{
		ChargeId:    fmt.Sprintf("ch_%04d", n),
		Status:      "succeeded",
		AmountCents: req.Msg.GetAmountCents(),
		CreatedAt:   timestamppb.Now(),
	})
	res.Header().Set("X-Charge-Number", fmt.Sprint(n))
	return res, nil
}

func (p *payments) GetCharge(_ context.Context, req *connect.Request[paymentsv1.GetChargeRequest]) (*connect.Response[paymentsv1.GetChargeResponse], error) {
	return connect.NewResponse(&paymentsv1.GetChargeResponse{
		Charge: &paymentsv1.ChargeResponse{ChargeId: req.Msg.GetChargeId(), Status: "succeeded"},
	}), nil
}

var orders atomic.Int64

// createOrder is the plain net/http endpoint.
func createOrder(w http.ResponseWriter, r *http.Request) {
	var in struct {
		Item     string `json:"item"`
		Quantity int    `json:"quantity"`
		Delay    string `json:"delay"`
	}
	if err := json.NewDecoder(r.Body).Decode(&in); err != nil || in.Item == "" || in.Quantity <= 0 {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusBadRequest)
		_, _ = w.Write([]byte(`{"error":"send {\"item\": \"...\", \"quantity\": n}"}`))
		return
	}
	if err := delay(r.Context(), in.Delay); err != nil {
		return
	}
	n := orders.Add(1)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Location", fmt.Sprintf("/orders/%d", n))
	w.WriteHeader(http.StatusCreated)
	_ = json.NewEncoder(w).Encode(map[string]any{"order_id": n, "item": in.Item, "quantity": in.Quantity})
}

func delay(ctx context.Context, s string) error {
	if s == "" {
		return nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d > time.Minute {
		return connect.NewError(connect.CodeInvalidArgument, errors.New(`delay must be a duration up to 1m, such as "3s"`))
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func openStore(logger *slog.Logger) (idempotency.Store, string, func(), error) {
	if addr, url := os.Getenv("REDIS_ADDR"), os.Getenv("REDIS_URL"); addr != "" || url != "" {
		return openRedis(addr, url, logger)
	}
	s := memory.New()
	return s, "in-memory store", func() { _ = s.Close() }, nil
}

func printHelp(w io.Writer, base, storeName string) {
	for _, l := range helpLines(base, storeName) {
		fmt.Fprintln(w, l)
	}
}

// helpLines are the commands that show the library at work against a
// server at base.
func helpLines(base, storeName string) []string {
	charge := base + "/idemkey.payments.v1.PaymentService/Charge"
	orders := base + "/orders"
	h := `-H 'Content-Type: application/json'`
	return []string{
		fmt.Sprintf("Payments example listening on %s (%s).", base, storeName),
		"",
		"The Connect service (Charge is guarded):",
		"1. A first call runs the handler:",
		fmt.Sprintf(`   curl -i %s %s -H 'Idempotency-Key: demo-1' -d '{"accountId":"acct_1","amountCents":1500,"currency":"EUR"}'`, charge, h),
		"2. The same call again is a replay (Idempotent-Replayed: true, same chargeId):",
		"   (run the command of step 1 again)",
		"3. Two concurrent calls with one key: the second gets 409 Conflict (Connect code aborted) with Retry-After:",
		fmt.Sprintf(`   curl -s %s %s -H 'Idempotency-Key: demo-2' -d '{"accountId":"acct_1","amountCents":700,"metadata":{"delay":"3s"}}' &`, charge, h),
		fmt.Sprintf(`   sleep 0.5; curl -i %s %s -H 'Idempotency-Key: demo-2' -d '{"accountId":"acct_1","amountCents":700,"metadata":{"delay":"3s"}}'; wait`, charge, h),
		"4. The key of step 1 with another payload is rejected: 400 (Connect code invalid_argument), nothing runs:",
		fmt.Sprintf(`   curl -i %s %s -H 'Idempotency-Key: demo-1' -d '{"accountId":"acct_1","amountCents":9999,"currency":"EUR"}'`, charge, h),
		"5. The server has gRPC reflection, so buf curl needs no schema (-v shows the replay header on a second run):",
		fmt.Sprintf(`   go run github.com/bufbuild/buf/cmd/buf@v1.75.0 curl -v --http2-prior-knowledge -H 'Idempotency-Key: demo-3' -d '{"accountId":"acct_1","amountCents":500,"currency":"EUR"}' %s`, charge),
		"",
		"The plain net/http endpoint (POST /orders):",
		"6. A first request runs the handler (201); the same request again is a replay:",
		fmt.Sprintf(`   curl -i %s %s -H 'Idempotency-Key: order-1' -d '{"item":"book","quantity":2}'`, orders, h),
		"7. Two concurrent requests with one key: the second gets 409 with Retry-After:",
		fmt.Sprintf(`   curl -s %s %s -H 'Idempotency-Key: order-2' -d '{"item":"pen","quantity":1,"delay":"3s"}' &`, orders, h),
		fmt.Sprintf(`   sleep 0.5; curl -i %s %s -H 'Idempotency-Key: order-2' -d '{"item":"pen","quantity":1,"delay":"3s"}'; wait`, orders, h),
		"8. The key of step 6 with another payload is rejected with 422, nothing runs:",
		fmt.Sprintf(`   curl -i %s %s -H 'Idempotency-Key: order-1' -d '{"item":"book","quantity":5}'`, orders, h),
		"",
		"9. A Connect client with the client interceptor retries a lost answer safely:",
		"   go run ./cmd/example -client",
		"",
		"10. The library's OpenTelemetry metrics, in the Prometheus format: idempotency_decisions_total by outcome and route:",
		fmt.Sprintf(`   curl -s %s/metrics | grep idempotency`, base),
		"",
		"Stop with Ctrl-C.",
	}
}
