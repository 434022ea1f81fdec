package pgstore_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/idemkey/idempotency"
	"github.com/idemkey/idempotency/httpmw"
	"github.com/idemkey/idempotency/internal/pgtest"
	"github.com/idemkey/idempotency/store/pgstore"
)

var quiet = idempotency.WithLogger(slog.New(slog.DiscardHandler))

// newTable creates a table of the test's own on pool and returns the option
// that names it.
func newTable(t testing.TB, pool *pgxpool.Pool) pgstore.Option {
	t.Helper()
	opt := pgstore.WithTable(pgtest.Name("idem"))
	require.NoError(t, pgstore.Migrate(context.Background(), pool, opt))
	return opt
}

// newStore returns a store on a table of the test's own, closed when the
// test ends.
func newStore(t testing.TB, pool *pgxpool.Pool, opts ...pgstore.Option) *pgstore.Store {
	t.Helper()
	opts = append([]pgstore.Option{newTable(t, pool), pgstore.WithSweepInterval(0)}, opts...)
	s := pgstore.New(pool, opts...)
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// newPool returns a pool on the test database with room for the
// concurrency of the tests, and a tracer if one is given.
func newPool(t testing.TB, tracer pgx.QueryTracer) *pgxpool.Pool {
	t.Helper()
	cfg := pgtest.Config(t)
	cfg.MaxConns = 16
	cfg.ConnConfig.Tracer = tracer
	return pgtest.NewPool(t, cfg)
}

// ledger is a business table of the test's own: one row per charge, with
// no unique constraint, so that a handler that ran twice for one order
// leaves two rows.
type ledger struct {
	pool  *pgxpool.Pool
	table string
}

func newLedger(t testing.TB, pool *pgxpool.Pool) *ledger {
	t.Helper()
	l := &ledger{pool: pool, table: pgtest.Name("ledger")}
	_, err := pool.Exec(context.Background(), "CREATE TABLE "+l.table+
		" (id bigserial PRIMARY KEY, order_id text NOT NULL, writer text NOT NULL)")
	require.NoError(t, err)
	return l
}

// charge writes one row for order in the request's transaction and returns
// its id.
func (l *ledger) charge(ctx context.Context, order, writer string) (int64, error) {
	tx, err := pgstore.Tx(ctx)
	if err != nil {
		return 0, err
	}
	var id int64
	err = tx.QueryRow(ctx, "INSERT INTO "+l.table+" (order_id, writer) VALUES ($1, $2) RETURNING id",
		order, writer).Scan(&id)
	return id, err
}

// writers returns who wrote the committed rows of order.
func (l *ledger) writers(t testing.TB, order string) []string {
	t.Helper()
	rows, err := l.pool.Query(context.Background(), "SELECT writer FROM "+l.table+" WHERE order_id = $1 ORDER BY id", order)
	require.NoError(t, err)
	writers, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	return writers
}

// chargeBody is the JSON a client sends and the handler answers.
type chargeBody struct {
	Order string `json:"order"`
	ID    int64  `json:"id,omitempty"`
}

// chargeHandler is an HTTP handler that charges in pgstore.Tx and answers
// 201 with the row's id. Its only contact with the library is pgstore.Tx.
// before, if set, runs after the write and before the answer.
func (l *ledger) chargeHandler(writer string, before func(r *http.Request)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body chargeBody
		if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		id, err := l.charge(r.Context(), body.Order, writer)
		if err != nil {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusInternalServerError)
			_, _ = fmt.Fprintf(w, `{"error":%q}`, err.Error())
			return
		}
		if before != nil {
			before(r)
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		_ = json.NewEncoder(w).Encode(chargeBody{Order: body.Order, ID: id})
	})
}

// serveHTTP starts h behind httpmw over store.
func serveHTTP(t testing.TB, store idempotency.Store, h http.Handler, opts ...idempotency.Option) *httptest.Server {
	t.Helper()
	opts = append([]idempotency.Option{quiet}, opts...)
	mux := http.NewServeMux()
	mux.Handle("POST /charges", httpmw.New(store, opts...)(h))
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv
}

// answer is what a client got.
type answer struct {
	status   int
	body     string
	replayed bool
	label    string // the Idempotency-Status header
}

// post sends a charge of order with key to srv.
func post(ctx context.Context, client *http.Client, url, key, order string) (answer, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url+"/charges",
		strings.NewReader(`{"order":"`+order+`"}`))
	if err != nil {
		return answer{}, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(idempotency.DefaultIdempotencyHeader, key)
	res, err := client.Do(req)
	if err != nil {
		return answer{}, err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	return answer{
		status:   res.StatusCode,
		body:     string(bytes.TrimSpace(b)),
		replayed: res.Header.Get(idempotency.DefaultReplayHeader) == "true",
		label:    res.Header.Get(idempotency.StatusHeader),
	}, err
}

// postUntil sends the charge until it is answered with something else than
// 409 (in flight), for at most d.
func postUntil(t testing.TB, client *http.Client, url, key, order string, d time.Duration) answer {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		a, err := post(t.Context(), client, url, key, order)
		require.NoError(t, err)
		if a.status != http.StatusConflict {
			return a
		}
		require.True(t, time.Now().Before(deadline), "still in flight after %v", d)
		time.Sleep(20 * time.Millisecond)
	}
}

// statements counts the statements a pool sends, as a pgx tracer.
type statements struct {
	mu   sync.Mutex
	sqls []string
}

func (s *statements) TraceQueryStart(ctx context.Context, _ *pgx.Conn, data pgx.TraceQueryStartData) context.Context {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sqls = append(s.sqls, statementName(data.SQL))
	return ctx
}

func (s *statements) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

// take returns the statements sent since the last call.
func (s *statements) take() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	sqls := s.sqls
	s.sqls = nil
	return sqls
}

// statementName names a statement of the store by what it does, and any
// other by its first word, in lower case.
func statementName(sql string) string {
	switch {
	case strings.Contains(sql, "ON CONFLICT"):
		return "claim"
	case strings.Contains(sql, "SET token = NULL, record = $3"):
		return "complete"
	case strings.Contains(sql, "DELETE FROM") && strings.Contains(sql, "token = $2"):
		return "release"
	}
	f := strings.Fields(strings.ToLower(sql))
	if len(f) == 0 {
		return ""
	}
	return f[0]
}
