package idempotency

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"unsafe"

	"google.golang.org/protobuf/proto"

	"github.com/idemkey/idempotency/internal/protorec"
)

// A Fingerprint identifies a request's payload: a SHA-256 over
// length-prefixed parts. The zero Fingerprint means "not fingerprinted".
type Fingerprint [sha256.Size]byte

// A Fingerprinter hashes parts, each prefixed by its length, so that no two
// different lists of parts hash alike: ("ab", "c") and ("a", "bc") differ.
// The zero value is ready to use, needs no allocation, and is not safe for
// concurrent use.
type Fingerprinter struct {
	n   int
	buf [fpBufSize]byte
}

const (
	fpBufSize = 512
	// A part longer than fpInline is represented by its own SHA-256. Which
	// form a part takes depends only on its length, which is written too,
	// so the encoding stays unambiguous.
	fpInline = 64
	fpPart   = binary.MaxVarintLen64 + fpInline
)

// AddString adds one part.
func (f *Fingerprinter) AddString(s string) {
	f.make()
	f.n += binary.PutUvarint(f.buf[f.n:], uint64(len(s)))
	if len(s) <= fpInline {
		f.n += copy(f.buf[f.n:], s)
		return
	}
	sum := sha256.Sum256(unsafe.Slice(unsafe.StringData(s), len(s)))
	f.n += copy(f.buf[f.n:], sum[:])
}

// AddBytes adds one part.
func (f *Fingerprinter) AddBytes(b []byte) {
	f.make()
	f.n += binary.PutUvarint(f.buf[f.n:], uint64(len(b)))
	if len(b) <= fpInline {
		f.n += copy(f.buf[f.n:], b)
		return
	}
	sum := sha256.Sum256(b)
	f.n += copy(f.buf[f.n:], sum[:])
}

// make ensures room for one more part by folding what is gathered into its
// hash when the buffer is nearly full.
func (f *Fingerprinter) make() {
	if f.n+fpPart <= fpBufSize {
		return
	}
	sum := sha256.Sum256(f.buf[:f.n])
	f.n = copy(f.buf[:], sum[:])
}

// Sum returns the fingerprint of the parts added so far and resets f.
func (f *Fingerprinter) Sum() Fingerprint {
	fp := Fingerprint(sha256.Sum256(f.buf[:f.n]))
	f.n = 0
	return fp
}

// storageKey is what the store sees: a hash over the scope, the route and
// the key, never the raw key.
func storageKey(scope, route, key string) string {
	var f Fingerprinter
	f.AddString(scope)
	f.AddString(route)
	f.AddString(key)
	sum := f.Sum()
	var b [43]byte // base64.RawURLEncoding.EncodedLen(sha256.Size)
	base64.RawURLEncoding.Encode(b[:], sum[:])
	return string(b[:])
}

// StorageKey returns the storage key under which a store keeps a request's
// claim and record: a hash over its scope (see [WithKeyScope]; "" without
// one), its route (for httpmw the method and path, as "POST /charges"; for
// the RPC adapters the procedure, as "/pkg.Service/Method") and its key as
// [ParseKey] returns it. Operators use it to inspect or forget a key
// ([Inspector], [Forgetter]) without the store ever seeing the raw key.
func StorageKey(scope, route, key string) string { return storageKey(scope, route, key) }

// FingerprintMessage is the fingerprint the RPC adapters give a request: a
// hash of its route (the procedure) and of the deterministic binary form of
// its message, which is the same whether the client sent JSON or binary.
func FingerprintMessage(route string, msg proto.Message) (Fingerprint, error) {
	buf := getBuffer()
	defer putBuffer(buf)
	b, err := protorec.AppendDeterministic((*buf)[:0], msg)
	if err != nil {
		return Fingerprint{}, err
	}
	*buf = b
	var f Fingerprinter
	f.AddString(route)
	f.AddBytes(b)
	return f.Sum(), nil
}
