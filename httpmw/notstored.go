package httpmw

import "github.com/idemkey/idempotency"

// notStored says why a guarded response was not stored (SPEC §4.2, §4.5).
// The zero value means it was stored.
type notStored uint8

const (
	storedOK notStored = iota
	notJSON
	invalidJSON
	untypedNotJSON
	untypedEncoded
	tooLarge
	flushed
	hijacked
	notFinal
	panicked
	requestEnded
	rpcProtocol
)

// String returns the reason as [idempotency.Execution.Skip] logs it (and
// as metrics count it): one of the engine's Reason words where one fits.
func (r notStored) String() string {
	switch r {
	case storedOK:
		return "stored"
	case notJSON, untypedNotJSON:
		return idempotency.ReasonNotJSON
	case invalidJSON:
		return "invalid-json"
	case untypedEncoded:
		return "untyped-encoded"
	case tooLarge:
		return idempotency.ReasonTooLarge
	case flushed, hijacked:
		return idempotency.ReasonStreamed
	case notFinal:
		return "not-final"
	case panicked:
		return idempotency.ReasonPanic
	case requestEnded:
		return idempotency.ReasonContextEnded
	case rpcProtocol:
		return "rpc-protocol"
	}
	return "unknown"
}
