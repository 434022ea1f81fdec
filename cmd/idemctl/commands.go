package main

import (
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode"

	"connectrpc.com/connect"

	"github.com/idemkey/idempotency"
)

func runInspect(args []string, stdout, stderr io.Writer) int {
	s, code := start("inspect", args, true, stdout, stderr)
	if s == nil {
		return code
	}
	defer s.end()
	e, err := s.store.Inspect(s.ctx, s.storageKey)
	if err != nil {
		return s.fail(err)
	}
	v := viewOf(s.storageKey, e)
	if s.json {
		writeJSON(s.stdout, v)
	} else {
		v.print(s.stdout)
	}
	if e.State == 0 {
		return exitAbsent
	}
	return exitOK
}

// forgetView is what forget prints as JSON.
type forgetView struct {
	StorageKey string `json:"storage_key"`
	Forgotten  bool   `json:"forgotten"`
	// Held is what the key held just before it was forgotten.
	Held *entryView `json:"held,omitempty"`
}

func runForget(args []string, stdout, stderr io.Writer) int {
	s, code := start("forget", args, true, stdout, stderr)
	if s == nil {
		return code
	}
	defer s.end()
	// Read first, to say what is deleted. What the key holds may change in
	// between; Forget then deletes whatever it holds by then.
	e, err := s.store.Inspect(s.ctx, s.storageKey)
	if err != nil {
		return s.fail(err)
	}
	forgotten, err := s.store.Forget(s.ctx, s.storageKey)
	if err != nil {
		return s.fail(err)
	}
	v := forgetView{StorageKey: s.storageKey, Forgotten: forgotten}
	if forgotten && e.State != 0 {
		held := viewOf(s.storageKey, e)
		v.Held = &held
	}
	switch {
	case s.json:
		writeJSON(s.stdout, v)
	case !forgotten:
		fmt.Fprintf(s.stdout, "storage key: %s\nnothing to forget: the key holds no claim and no record\n", s.storageKey)
	case v.Held == nil:
		fmt.Fprintf(s.stdout, "storage key: %s\nforgot what the key held (it changed while being read)\n", s.storageKey)
	default:
		fmt.Fprintf(s.stdout, "forgot:\n")
		v.Held.print(s.stdout)
		if e.State == idempotency.StateInFlight {
			fmt.Fprintf(s.stdout, "The next request with this key runs; the request in flight can no longer complete it.\n")
		} else {
			fmt.Fprintf(s.stdout, "The next request with this key runs again.\n")
		}
	}
	if !forgotten {
		return exitAbsent
	}
	return exitOK
}

// statsView is what stats prints as JSON.
type statsView struct {
	Store   string `json:"store"`
	Claims  int64  `json:"claims"`
	Records int64  `json:"records"`
}

func runStats(args []string, stdout, stderr io.Writer) int {
	s, code := start("stats", args, false, stdout, stderr)
	if s == nil {
		return code
	}
	defer s.end()
	n, err := s.store.Count(s.ctx)
	if err != nil {
		return s.fail(err)
	}
	v := statsView{Store: s.backend.name, Claims: n.Claims, Records: n.Records}
	if s.json {
		writeJSON(s.stdout, v)
		return exitOK
	}
	fmt.Fprintf(s.stdout, "store:   %s\nclaims:  %d (requests in flight)\nrecords: %d (completed, replayed to retries)\n",
		v.Store, v.Claims, v.Records)
	return exitOK
}

// entryView is what a key holds, as inspect prints it.
type entryView struct {
	StorageKey string `json:"storage_key"`
	// State is "absent", "in-flight" or "completed".
	State string `json:"state"`
	// TTLMillis is the lease left of a claim or the time left of a record,
	// in milliseconds; zero for a record that never expires.
	TTLMillis    int64 `json:"ttl_ms"`
	NeverExpires bool  `json:"never_expires,omitempty"`
	// Size is the stored record's size in bytes.
	Size   int         `json:"size,omitempty"`
	Record *recordView `json:"record,omitempty"`
	// DecodeError says why the record could not be read.
	DecodeError string `json:"decode_error,omitempty"`

	ttl time.Duration
}

// recordView is what a completed record says, without the body and the
// header values, which may hold personal data or secrets.
type recordView struct {
	Status   int        `json:"status"`
	Message  string     `json:"message,omitempty"`
	Error    *errorView `json:"error,omitempty"`
	BodySize int        `json:"body_size"`
	Headers  []string   `json:"headers,omitempty"`
	Trailers []string   `json:"trailers,omitempty"`
}

type errorView struct {
	Code    string `json:"code"`
	Message string `json:"message,omitempty"`
	Details int    `json:"details,omitempty"`
}

func viewOf(storageKey string, e idempotency.Entry) entryView {
	v := entryView{StorageKey: storageKey, ttl: e.TTL, TTLMillis: e.TTL.Milliseconds()}
	switch e.State {
	case idempotency.StateInFlight:
		v.State = "in-flight"
	case idempotency.StateCompleted:
		v.State = "completed"
		v.NeverExpires = e.TTL == 0
		v.Size = len(e.Record)
		r, err := idempotency.DecodeRecord(e.Record)
		if err != nil {
			v.DecodeError = err.Error()
			break
		}
		v.Record = &recordView{
			Status:   r.Status,
			Message:  r.Message,
			BodySize: len(r.Body),
			Headers:  names(r.Header),
			Trailers: names(r.Trailer),
		}
		if r.Error != nil {
			v.Record.Error = &errorView{
				Code:    connect.Code(r.Error.Code).String(),
				Message: r.Error.Message,
				Details: len(r.Error.Details),
			}
		}
	default:
		v.State = "absent"
	}
	return v
}

func names[M ~map[string][]string](h M) []string {
	if len(h) == 0 {
		return nil
	}
	out := make([]string, 0, len(h))
	for name := range h {
		out = append(out, name)
	}
	sort.Strings(out)
	return out
}

func (v *entryView) print(w io.Writer) {
	fmt.Fprintf(w, "storage key: %s\n", v.StorageKey)
	switch v.State {
	case "absent":
		fmt.Fprintf(w, "state:       nothing (no claim, no record): the next request with this key runs\n")
		return
	case "in-flight":
		fmt.Fprintf(w, "state:       in flight (a request holds the claim)\n")
		if v.ttl > 0 {
			fmt.Fprintf(w, "lease left:  %v\n", round(v.ttl))
		} else {
			fmt.Fprintf(w, "lease left:  unknown\n")
		}
		return
	}
	fmt.Fprintf(w, "state:       completed (retries get the stored response)\n")
	if v.NeverExpires {
		fmt.Fprintf(w, "time left:   never expires\n")
	} else {
		fmt.Fprintf(w, "time left:   %v\n", round(v.ttl))
	}
	fmt.Fprintf(w, "size:        %d bytes\n", v.Size)
	r := v.Record
	if r == nil {
		fmt.Fprintf(w, "record:      cannot be decoded: %s\n", printable(v.DecodeError))
		return
	}
	fmt.Fprintf(w, "status:      %d\n", r.Status)
	if r.Message != "" {
		fmt.Fprintf(w, "message:     %s\n", printable(r.Message))
	}
	if r.Error != nil {
		fmt.Fprintf(w, "error:       %s", r.Error.Code)
		if r.Error.Message != "" {
			fmt.Fprintf(w, ": %s", strconv.Quote(r.Error.Message))
		}
		if r.Error.Details > 0 {
			fmt.Fprintf(w, " (%d details)", r.Error.Details)
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintf(w, "body:        %d bytes\n", r.BodySize)
	if len(r.Headers) > 0 {
		fmt.Fprintf(w, "headers:     %s\n", printableList(r.Headers))
	}
	if len(r.Trailers) > 0 {
		fmt.Fprintf(w, "trailers:    %s\n", printableList(r.Trailers))
	}
}

// round makes a duration readable: milliseconds under a minute, seconds
// above.
func round(d time.Duration) time.Duration {
	if d >= time.Minute {
		return d.Truncate(time.Second)
	}
	return d.Round(time.Millisecond)
}

// printable returns s as it is, or quoted if it holds characters that a
// terminal could take as commands.
func printable(s string) string {
	if strings.IndexFunc(s, func(r rune) bool { return !unicode.IsPrint(r) }) >= 0 {
		return strconv.Quote(s)
	}
	return s
}

func printableList(list []string) string {
	out := make([]string, len(list))
	for i, s := range list {
		out[i] = printable(s)
	}
	return strings.Join(out, ", ")
}

func writeJSON(w io.Writer, v any) {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	// Encoding these views cannot fail.
	_ = enc.Encode(v)
}
