package idempotency

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/google/uuid"
)

// MaxKeyLength is the longest key accepted, in bytes.
const MaxKeyLength = 255

// ParseKey reads the key from the values of the key header. It returns ""
// and no error when there is no key (no value, or one that is empty after
// trimming), and an error wrapping [ErrInvalidKey] when the key is malformed:
// several values, a raw value with a comma (a list), a broken RFC 8941
// quoted string, more than [MaxKeyLength] bytes, control characters or
// invalid UTF-8. A raw token and a quoted string name the same key:
// `abc` and `"abc"` are equal. With enforceUUID4, the key must be a version
// 4 UUID with the RFC 4122 variant and is returned in canonical form.
func ParseKey(values []string, enforceUUID4 bool) (string, error) {
	switch len(values) {
	case 0:
		return "", nil
	case 1:
	default:
		return "", fmt.Errorf("%w: the header appears more than once", ErrInvalidKey)
	}
	key := strings.TrimSpace(values[0])
	if key == "" {
		return "", nil
	}
	if key[0] == '"' {
		var err error
		if key, err = unquote(key); err != nil {
			return "", err
		}
	} else if strings.IndexByte(key, ',') >= 0 {
		return "", fmt.Errorf("%w: a raw key must not contain a comma; quote it", ErrInvalidKey)
	}
	if len(key) == 0 {
		return "", fmt.Errorf("%w: the key is empty", ErrInvalidKey)
	}
	if len(key) > MaxKeyLength {
		return "", fmt.Errorf("%w: the key is longer than %d bytes", ErrInvalidKey, MaxKeyLength)
	}
	if err := checkChars(key); err != nil {
		return "", err
	}
	if enforceUUID4 {
		return canonicalUUID4(key)
	}
	return key, nil
}

func checkChars(key string) error {
	for i := 0; i < len(key); i++ {
		c := key[i]
		if c < utf8.RuneSelf {
			if c < 0x20 || c == 0x7f {
				return fmt.Errorf("%w: the key contains a control character", ErrInvalidKey)
			}
			continue
		}
		r, size := utf8.DecodeRuneInString(key[i:])
		if r == utf8.RuneError && size == 1 {
			return fmt.Errorf("%w: the key is not valid UTF-8", ErrInvalidKey)
		}
		if unicode.IsControl(r) {
			return fmt.Errorf("%w: the key contains a control character", ErrInvalidKey)
		}
		i += size - 1
	}
	return nil
}

// unquote decodes an RFC 8941 string: printable ASCII between double
// quotes, with only \" and \\ as escapes.
func unquote(s string) (string, error) {
	if len(s) < 2 || s[len(s)-1] != '"' {
		return "", fmt.Errorf("%w: unterminated quoted string", ErrInvalidKey)
	}
	body := s[1 : len(s)-1]
	if strings.IndexByte(body, '\\') < 0 {
		if strings.IndexByte(body, '"') >= 0 {
			return "", fmt.Errorf("%w: unescaped quote in quoted string", ErrInvalidKey)
		}
		for i := range len(body) {
			if body[i] < 0x20 || body[i] > 0x7e {
				return "", fmt.Errorf("%w: quoted string allows printable ASCII only", ErrInvalidKey)
			}
		}
		return body, nil
	}
	var b strings.Builder
	b.Grow(len(body))
	for i := 0; i < len(body); i++ {
		c := body[i]
		switch {
		case c == '\\':
			i++
			if i == len(body) || (body[i] != '"' && body[i] != '\\') {
				return "", fmt.Errorf("%w: quoted string allows only \\\" and \\\\ as escapes", ErrInvalidKey)
			}
			b.WriteByte(body[i])
		case c == '"':
			return "", fmt.Errorf("%w: unescaped quote in quoted string", ErrInvalidKey)
		case c < 0x20 || c > 0x7e:
			return "", fmt.Errorf("%w: quoted string allows printable ASCII only", ErrInvalidKey)
		default:
			b.WriteByte(c)
		}
	}
	return b.String(), nil
}

func canonicalUUID4(key string) (string, error) {
	u, err := uuid.Parse(key)
	if err != nil {
		return "", fmt.Errorf("%w: a version 4 UUID is expected", ErrInvalidKey)
	}
	if u.Version() != 4 || u.Variant() != uuid.RFC4122 {
		return "", fmt.Errorf("%w: a version 4 UUID is expected, got version %d", ErrInvalidKey, u.Version())
	}
	return u.String(), nil
}
