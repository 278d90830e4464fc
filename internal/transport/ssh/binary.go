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

// EnsureBinary makes sure the host has a copy of the local file at
// ~/.drover/bin/drover-<first 16 hex digits of its SHA-256> and returns
// that path. A copy already there is kept if its checksum (sha256sum on
// the host) matches; otherwise the file is streamed over a session's
// stdin to a temp name, checked, made executable and renamed into place,
// so hosts sharing a home directory can race safely.
func (c *Client) EnsureBinary(ctx context.Context, localPath string) (remotePath string, err error) {
	f, err := os.Open(localPath)
	if err != nil {
		return "", fmt.Errorf("%s: copy drover: %w", c.name, err)
	}
	defer f.Close()
	h := sha256.New()
	size, err := io.Copy(h, f)
	if err != nil {
		return "", fmt.Errorf("%s: copy drover: hash %s: %w", c.name, localPath, err)
	}
	sum := hex.EncodeToString(h.Sum(nil))
	name := "drover-" + sum[:16]

	// One round trip when the binary is already there.
	check := fmt.Sprintf(`set -e
f="$HOME/%s/%s"
if [ -f "$f" ] && [ -x "$f" ] && [ "$(sha256sum < "$f" | cut -d' ' -f1)" = %s ]; then echo "present $f"; else echo "missing $f"; fi`,
		BinaryDir, name, sum)
	var out, errOut bytes.Buffer
	if err := c.Run(ctx, check, nil, &out, &errOut); err != nil {
		return "", fmt.Errorf("copy drover: check for %s: %w%s", name, err, stderrSuffix(&errOut))
	}
	state, path, _ := strings.Cut(strings.TrimSpace(out.String()), " ")
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
