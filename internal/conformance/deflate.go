package main

import (
	"compress/zlib"
	"io"

	"connectrpc.com/connect"
)

// withDeflate adds the "deflate" compression (the zlib format, as HTTP
// names it), from the standard library, to the gzip that connect-go has
// built in.
func withDeflate() connect.HandlerOption {
	return connect.WithCompression("deflate",
		func() connect.Decompressor { return &deflateReader{} },
		func() connect.Compressor { return zlib.NewWriter(nil) },
	)
}

// deflateReader gives a zlib reader the Reset that connect.Decompressor
// asks for; zlib reads the stream's header as it starts.
type deflateReader struct{ r io.ReadCloser }

func (d *deflateReader) Read(p []byte) (int, error) {
	if d.r == nil {
		return 0, io.EOF
	}
	return d.r.Read(p)
}

func (d *deflateReader) Reset(src io.Reader) error {
	if d.r == nil {
		r, err := zlib.NewReader(src)
		if err != nil {
			return err
		}
		d.r = r
		return nil
	}
	return d.r.(zlib.Resetter).Reset(src, nil) // zlib.NewReader's reader is one
}

func (d *deflateReader) Close() error {
	if d.r == nil {
		return nil
	}
	return d.r.Close()
}
