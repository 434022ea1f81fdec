package pgstore

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/idemkey/idempotency"
)

var (
	// ErrNoTx is returned by [Tx] when its context carries no transaction:
	// the request had no idempotency key, the store was unavailable and
	// the engine failed open ([idempotency.WithFailOpen]), the handler is
	// not behind the library, or its store is not a pgstore [Store].
	ErrNoTx = errors.New("pgstore: no idempotency transaction in the context")
	// ErrTxDone is returned by [Tx] once the handler has returned: its
	// transaction has been committed or rolled back.
	ErrTxDone = errors.New("pgstore: the idempotency transaction has ended")
	// ErrTxOwned is returned by Commit and Rollback of the transaction that
	// [Tx] returns: the library commits it after the handler returns, or
	// rolls it back.
	ErrTxOwned = errors.New("pgstore: the idempotency transaction commits or rolls back when the handler returns; " +
		"do not commit or roll it back yourself (use tx.Begin for a savepoint)")
	// errTxState means the handler's transaction was no longer open when
	// the handler returned: something ended it behind the library's back.
	errTxState = errors.New("pgstore: the handler's transaction was not open when the handler returned")
)

type txKey struct{}

// Tx returns the transaction in which the response of the request that ctx
// belongs to will be stored, beginning it on first call (one round trip);
// later calls in the same request return the same transaction. A handler
// behind any adapter of the library (the Connect interceptor, httpmw, ...)
// over a pgstore [Store] gets it from its own context, with no other call to
// the library.
//
// Who owns it: the library. After the handler returns, the library writes
// the record in this transaction, with a compare-and-set on the claim's
// token and live lease, and commits, before the client gets its answer. So
// the handler's writes commit if and only if its response is stored:
//   - a response that the store policy keeps (a stored 4xx too) commits;
//   - a panic, a response that is not stored (503, 429, an HTML answer
//     httpmw does not store, a request whose context ended) rolls back, and
//     the claim is released, so a retry runs on clean data;
//   - a holder whose lease ran out, or a failed commit, rolls back, and the
//     client gets the library's store-unavailable answer (503 /
//     CodeUnavailable: retry with the same key) instead of the handler's.
//
// The handler must not commit or roll back the transaction: its Commit and
// Rollback return [ErrTxOwned], and a transaction ended some other way (an
// SQL COMMIT) is detected when the handler returns and answered as a failed
// commit. Savepoints are fine: tx.Begin starts one, and its Commit and
// Rollback release or roll back to it. A statement that fails aborts the
// whole transaction, and then nothing the handler did can be stored: run
// statements that may fail, such as an INSERT that can violate a unique
// constraint, in a savepoint. Like any pgx.Tx, it is not safe for
// concurrent use; Tx itself is. Its connection comes from the store's pool
// and returns there when the transaction ends.
//
// Tx returns [ErrNoTx] when ctx carries no transaction (see there); a
// handler that serves requests without a key too then begins its own. It
// returns [ErrTxDone] after the handler returned.
func Tx(ctx context.Context) (pgx.Tx, error) {
	switch v := ctx.Value(txKey{}).(type) {
	case *binding:
		return v.begin(ctx)
	case pgx.Tx:
		return ownedTx{v}, nil
	}
	return nil, ErrNoTx
}

// ContextWithTx returns a context in which [Tx] returns tx (with Commit and
// Rollback refused, as always), so that a handler's tests can run it on a
// transaction of their own, which they commit or roll back themselves.
func ContextWithTx(ctx context.Context, tx pgx.Tx) context.Context {
	return context.WithValue(ctx, txKey{}, tx)
}

// ownedTx is the handler's view of a transaction the library owns.
type ownedTx struct{ pgx.Tx }

// Commit refuses: the library commits when the handler returns.
func (ownedTx) Commit(context.Context) error { return ErrTxOwned }

// Rollback refuses: the library rolls back when the handler's response is
// not stored.
func (ownedTx) Rollback(context.Context) error { return ErrTxOwned }

// BindTx implements [idempotency.TxBinder]: the engine calls it for each
// claimed request, and the handler gets the transaction through [Tx]. It
// begins nothing: a handler that never calls Tx costs no round trip.
func (s *Store) BindTx(ctx context.Context, key, token string) (context.Context, idempotency.TxCompleter) {
	b := &binding{s: s, key: key, token: token}
	return context.WithValue(ctx, txKey{}, b), b
}

// binding is one claimed request's transaction, begun on demand.
type binding struct {
	s          *Store
	key, token string

	mu    sync.Mutex
	tx    pgx.Tx // nil until the handler asks
	ended bool
}

func (b *binding) begin(ctx context.Context) (pgx.Tx, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.ended {
		return nil, ErrTxDone
	}
	if b.tx == nil {
		tx, err := b.s.pool.BeginTx(ctx, b.s.txOptions)
		if err != nil {
			return nil, fmt.Errorf("pgstore: begin: %w", err)
		}
		b.tx = tx
	}
	return ownedTx{b.tx}, nil
}

// end marks the binding ended and returns its transaction, or nil.
func (b *binding) end() pgx.Tx {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.ended = true
	return b.tx
}

// CompleteTx implements [idempotency.TxCompleter]: the record's
// compare-and-set, then COMMIT, two round trips on the transaction's
// connection.
func (b *binding) CompleteTx(ctx context.Context, record []byte, expiry time.Duration) (bool, error) {
	tx := b.end()
	if tx == nil {
		return false, nil
	}
	if status := tx.Conn().PgConn().TxStatus(); status != 'T' {
		_ = tx.Rollback(ctx)
		return true, fmt.Errorf("%w (status %q)", errTxState, status)
	}
	if err := ended("complete", tx.QueryRow(ctx, b.s.q.complete, b.key, b.token, record, expiryMicros(expiry))); err != nil {
		_ = tx.Rollback(ctx)
		return true, err
	}
	if err := tx.Commit(ctx); err != nil {
		return true, fmt.Errorf("pgstore: commit: %w", err)
	}
	return true, nil
}

// RollbackTx implements [idempotency.TxCompleter].
func (b *binding) RollbackTx(ctx context.Context) error {
	tx := b.end()
	if tx == nil {
		return nil
	}
	if err := tx.Rollback(ctx); err != nil && !errors.Is(err, pgx.ErrTxClosed) {
		return fmt.Errorf("pgstore: rollback: %w", err)
	}
	return nil
}
