package idempotency

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseKey(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		values  []string
		uuid4   bool
		wantKey string
		wantErr string
	}{
		{name: "absent", values: nil},
		{name: "empty", values: []string{""}},
		{name: "blank", values: []string{" \t "}},
		{name: "raw", values: []string{"abc"}, wantKey: "abc"},
		{name: "trimmed", values: []string{"  abc\t"}, wantKey: "abc"},
		{name: "quoted names the raw key", values: []string{`"abc"`}, wantKey: "abc"},
		{name: "quoted with escapes", values: []string{`"a\"b\\c"`}, wantKey: `a"b\c`},
		{name: "quoted with comma", values: []string{`"a,b"`}, wantKey: "a,b"},
		{name: "utf-8", values: []string{"clé-été"}, wantKey: "clé-été"},
		{name: "255 bytes", values: []string{strings.Repeat("k", 255)}, wantKey: strings.Repeat("k", 255)},
		{name: "256 bytes", values: []string{strings.Repeat("k", 256)}, wantErr: "longer than 255"},
		{name: "two values", values: []string{"a", "b"}, wantErr: "more than once"},
		{name: "raw list", values: []string{"a, b"}, wantErr: "comma"},
		{name: "empty quoted", values: []string{`""`}, wantErr: "empty"},
		{name: "unterminated quote", values: []string{`"abc`}, wantErr: "unterminated"},
		{name: "bad escape", values: []string{`"a\nb"`}, wantErr: "escapes"},
		{name: "inner quote", values: []string{`"a"b"`}, wantErr: "unescaped quote"},
		{name: "non-ascii in quoted", values: []string{`"é"`}, wantErr: "printable ASCII"},
		{name: "control character", values: []string{"a\x01b"}, wantErr: "control character"},
		{name: "delete character", values: []string{"a\x7fb"}, wantErr: "control character"},
		{name: "C1 control character", values: []string{"a\u0085b"}, wantErr: "control character"},
		{name: "invalid utf-8", values: []string{"a\xffb"}, wantErr: "UTF-8"},
		{name: "uuid4 canonical", uuid4: true, values: []string{"6f1c0e5e-7c1a-4e43-9f7e-2f0c8f6d2a11"}, wantKey: "6f1c0e5e-7c1a-4e43-9f7e-2f0c8f6d2a11"},
		{name: "uuid4 upper hex", uuid4: true, values: []string{"6F1C0E5E-7C1A-4E43-9F7E-2F0C8F6D2A11"}, wantKey: "6f1c0e5e-7c1a-4e43-9f7e-2f0c8f6d2a11"},
		{name: "uuid4 32 hex", uuid4: true, values: []string{"6f1c0e5e7c1a4e439f7e2f0c8f6d2a11"}, wantKey: "6f1c0e5e-7c1a-4e43-9f7e-2f0c8f6d2a11"},
		{name: "uuid4 braced", uuid4: true, values: []string{"{6f1c0e5e-7c1a-4e43-9f7e-2f0c8f6d2a11}"}, wantKey: "6f1c0e5e-7c1a-4e43-9f7e-2f0c8f6d2a11"},
		{name: "uuid4 urn", uuid4: true, values: []string{"urn:uuid:6f1c0e5e-7c1a-4e43-9f7e-2f0c8f6d2a11"}, wantKey: "6f1c0e5e-7c1a-4e43-9f7e-2f0c8f6d2a11"},
		{name: "uuid4 quoted", uuid4: true, values: []string{`"6f1c0e5e-7c1a-4e43-9f7e-2f0c8f6d2a11"`}, wantKey: "6f1c0e5e-7c1a-4e43-9f7e-2f0c8f6d2a11"},
		{name: "uuid v1 rejected", uuid4: true, values: []string{"8a5c3e10-9b1d-11ee-8c90-0242ac120002"}, wantErr: "version 4 UUID is expected, got version 1"},
		{name: "uuid4 wrong variant", uuid4: true, values: []string{"6f1c0e5e-7c1a-4e43-cf7e-2f0c8f6d2a11"}, wantErr: "version 4 UUID is expected"},
		{name: "not a uuid", uuid4: true, values: []string{"order-42"}, wantErr: "version 4 UUID is expected"},
		{name: "no uuid check by default", values: []string{"8a5c3e10-9b1d-11ee-8c90-0242ac120002"}, wantKey: "8a5c3e10-9b1d-11ee-8c90-0242ac120002"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			key, err := ParseKey(tt.values, tt.uuid4)
			if tt.wantErr != "" {
				require.Error(t, err)
				assert.ErrorIs(t, err, ErrInvalidKey)
				assert.Contains(t, err.Error(), tt.wantErr)
				assert.Empty(t, key)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.wantKey, key)
		})
	}
}

func TestStorageKey(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		a, b       [3]string
		wantEquals bool
	}{
		{name: "same parts", a: [3]string{"s", "r", "k"}, b: [3]string{"s", "r", "k"}, wantEquals: true},
		{name: "concatenation differs", a: [3]string{"", "ab", "c"}, b: [3]string{"", "a", "bc"}},
		{name: "scope into route", a: [3]string{"ab", "c", "k"}, b: [3]string{"a", "bc", "k"}},
		{name: "other route", a: [3]string{"", "POST /a", "k"}, b: [3]string{"", "POST /b", "k"}},
		{name: "other scope", a: [3]string{"tenant-1", "r", "k"}, b: [3]string{"tenant-2", "r", "k"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ka := storageKey(tt.a[0], tt.a[1], tt.a[2])
			kb := storageKey(tt.b[0], tt.b[1], tt.b[2])
			assert.Equal(t, tt.wantEquals, ka == kb)
		})
	}
}

func TestStorageKeyHidesRawKey(t *testing.T) {
	t.Parallel()
	raw := "secret-customer-key-0001"
	k := storageKey("tenant", "POST /charges", raw)
	assert.NotContains(t, k, raw)
	assert.NotContains(t, k, "tenant")
	assert.Len(t, k, 43)
}

func TestFingerprinterSeparatesParts(t *testing.T) {
	t.Parallel()
	var f Fingerprinter
	f.AddString("ab")
	f.AddBytes([]byte("c"))
	a := f.Sum()
	f.AddString("a")
	f.AddBytes([]byte("bc"))
	b := f.Sum()
	f.AddString("ab")
	f.AddString("c")
	c := f.Sum()
	assert.NotEqual(t, a, b)
	assert.Equal(t, a, c, "strings and bytes of the same content hash alike")
	assert.NotEqual(t, Fingerprint{}, a)
}

func BenchmarkParseKey(b *testing.B) {
	values := []string{"6f1c0e5e-7c1a-4e43-9f7e-2f0c8f6d2a11"}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParseKey(values, false); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkStorageKey(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		_ = storageKey("tenant", "POST /charges", "6f1c0e5e-7c1a-4e43-9f7e-2f0c8f6d2a11")
	}
}

func TestFingerprinterStreamsLargeParts(t *testing.T) {
	t.Parallel()
	big := strings.Repeat("x", 2000)
	var f Fingerprinter
	f.AddString("a")
	f.AddString(big)
	a := f.Sum()
	f.AddString("a")
	f.AddBytes([]byte(big))
	b := f.Sum()
	f.AddString("a")
	f.AddString(big + "y")
	c := f.Sum()
	assert.Equal(t, a, b)
	assert.NotEqual(t, a, c)
}
