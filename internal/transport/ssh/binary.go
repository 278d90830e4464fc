package ssh

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"strings"
	"time"
)

// BinaryDir is where EnsureBinary keeps drover binaries on a host,
// relative to the login user's home directory.
const BinaryDir = ".drover/bin"

// Binary is a local drover binary to copy to hosts, hashed once.
type Binary struct {
	Path string
	Sum  string // hex SHA-256
	Size int64
	// Platform, when set, is what `uname -sm` must print on a host for the
	// binary to run there, like "Linux x86_64".
	Platform string
}

// PlatformError is a host the binary cannot run on.
type PlatformError struct {
	Host, Got, Want string
}

func (e *PlatformError) Error() string {
	return fmt.Sprintf("%s is %q but this drover is built for %q; build drover for the host and pass --node-binary", e.Host, e.Got, e.Want)
}

// LoadBinary hashes the file at path.
func LoadBinary(path string) (Binary, error) {
	f, err := os.Open(path)
	if err != nil {
		return Binary{}, fmt.Errorf("copy drover: %w", err)
	}
	defer f.Close()
	h := sha256.New()
	size, err := io.Copy(h, f)
	if err != nil {
		return Binary{}, fmt.Errorf("copy drover: hash %s: %w", path, err)
	}
	return Binary{Path: path, Sum: hex.EncodeToString(h.Sum(nil)), Size: size}, nil
}

// EnsureBinary is Install for the file at localPath.
func (c *Client) EnsureBinary(ctx context.Context, localPath string) (remotePath string, err error) {
	b, err := LoadBinary(localPath)
	if err != nil {
		return "", fmt.Errorf("%s: %w", c.name, err)
	}
	return c.Install(ctx, b)
}

// Install makes sure the host has a copy of b at
// ~/.drover/bin/drover-<first 16 hex digits of its SHA-256> and returns
// that path. A copy is only ever put in place by a rename after its
// checksum was verified on the host, so one already there with the right
// size is kept without hashing it again; otherwise the file is streamed
// over a session's stdin to a temp name, checked, made executable and
// renamed into place, so hosts sharing a home directory can race safely.
func (c *Client) Install(ctx context.Context, b Binary) (remotePath string, err error) {
	f, err := os.Open(b.Path)
	if err != nil {
		return "", fmt.Errorf("%s: copy drover: %w", c.name, err)
	}
	defer f.Close()
	sum, size := b.Sum, b.Size
	name := "drover-" + sum[:16]

	// One round trip when the binary is already there: the platform, then
	// whether the copy is present.
	check := fmt.Sprintf(`set -e
uname -sm
f="$HOME/%s/%s"
if [ -f "$f" ] && [ -x "$f" ] && [ "$(wc -c < "$f")" -eq %d ]; then echo "present $f"; else echo "missing $f"; fi`,
		BinaryDir, name, size)
	var out, errOut bytes.Buffer
	if err := c.Run(ctx, check, nil, &out, &errOut); err != nil {
		return "", fmt.Errorf("copy drover: check for %s: %w%s", name, err, stderrSuffix(&errOut))
	}
	platform, answer, _ := strings.Cut(strings.TrimSpace(out.String()), "\n")
	if b.Platform != "" && strings.TrimSpace(platform) != b.Platform {
		return "", &PlatformError{Host: c.name, Got: strings.TrimSpace(platform), Want: b.Platform}
	}
	state, path, _ := strings.Cut(strings.TrimSpace(answer), " ")
	if path == "" || (state != "present" && state != "missing") {
		return "", fmt.Errorf("%s: copy drover: unexpected answer from the host: %q", c.name, out.String())
	}
	if state == "present" {
		c.log.Debug("drover binary already on host", "host", c.name, "path", path)
		return path, nil
	}

	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return "", fmt.Errorf("%s: copy drover: %w", c.name, err)
	}
	upload := fmt.Sprintf(`set -e
d="$HOME/%[1]s"
mkdir -p "$d"
t=$(mktemp "$d/.%[2]s.XXXXXX")
trap 'rm -f "$t"' EXIT
cat > "$t"
got=$(sha256sum < "$t" | cut -d' ' -f1)
if [ "$got" != %[3]s ]; then echo "checksum mismatch after upload: got $got, want %[3]s" >&2; exit 3; fi
chmod 0755 "$t"
mv -f "$t" "$d/%[2]s"
trap - EXIT
echo "$d/%[2]s"`, BinaryDir, name, sum)
	start := time.Now()
	out.Reset()
	errOut.Reset()
	if err := c.Run(ctx, upload, f, &out, &errOut); err != nil {
		return "", fmt.Errorf("copy drover: upload %s (%d bytes): %w%s", name, size, err, stderrSuffix(&errOut))
	}
	path = strings.TrimSpace(out.String())
	c.log.Info("copied drover binary to host", "host", c.name, "path", path, "bytes", size, "elapsed", time.Since(start))
	return path, nil
}

func stderrSuffix(b *bytes.Buffer) string {
	if s := strings.TrimSpace(b.String()); s != "" {
		return ": " + s
	}
	return ""
}
