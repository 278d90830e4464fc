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

// UnsafeBinaryDirError is a host whose drover binary directory, or the
// binary in it, drover will not trust: a symlink, not the login user's,
// or writable by others.
type UnsafeBinaryDirError struct {
	Host   string
	Reason string // as the host reported it, naming the path
}

func (e *UnsafeBinaryDirError) Error() string {
	return fmt.Sprintf("%s: copy drover: %s; drover keeps its binary in ~/%s, a private directory of the login user (mode 0700, no symlinks). "+
		"Fix or remove it on the host (rm -rf ~/%s) and deploy again", e.Host, e.Reason, BinaryDir, BinaryDir)
}

// binaryDirCheck is shell that makes ~/.drover and ~/.drover/bin exist as
// directories of the login user with mode 0700, or prints "unsafe REASON"
// and exits. A directory of the user's with a wider mode (from older
// drovers) is narrowed; one that is a symlink, someone else's or writable
// by group or others is refused, since whoever can write there chooses
// what drover runs.
const binaryDirCheck = `unsafe() { echo "unsafe $*"; exit 0; }
me=$(id -u)
for p in "$HOME/.drover" "$HOME/%[1]s"; do
  if [ -L "$p" ]; then unsafe "$p is a symlink"; fi
  if [ ! -e "$p" ]; then mkdir -m 0700 "$p" 2>/dev/null || true; fi
  if [ ! -d "$p" ]; then unsafe "$p is not a directory"; fi
  owner=$(stat -c %%u "$p")
  if [ "$owner" != "$me" ]; then unsafe "$p is owned by uid $owner, not the login user (uid $me)"; fi
  perm=$(stat -c %%A "$p")
  case "$perm" in ?????w????|????????w?) unsafe "$p is writable by others (mode $perm)";; esac
  chmod 0700 "$p"
done
`

// Install makes sure the host has a copy of b at
// ~/.drover/bin/drover-<first 16 hex digits of its SHA-256> and returns
// that path. A copy already there is reused only when its SHA-256 matches
// b's, checked in the same session; otherwise the file is streamed over a
// session's stdin to a temp name, checked, made executable and renamed
// into place, so hosts sharing a home directory can race safely. The
// directory must be the login user's alone (see binaryDirCheck) and the
// binary path no symlink: an *UnsafeBinaryDirError says why not.
func (c *Client) Install(ctx context.Context, b Binary) (remotePath string, err error) {
	f, err := os.Open(b.Path)
	if err != nil {
		return "", fmt.Errorf("%s: copy drover: %w", c.name, err)
	}
	defer f.Close()
	sum, size := b.Sum, b.Size
	name := "drover-" + sum[:16]

	// One round trip when the binary is already there: the platform, the
	// directory's safety, then whether a verified copy is present.
	check := fmt.Sprintf(`set -e
uname -sm
`+binaryDirCheck+`f="$HOME/%[1]s/%[2]s"
if [ -L "$f" ]; then unsafe "$f is a symlink"; fi
if [ -f "$f" ] && [ -x "$f" ] && [ "$(wc -c < "$f")" -eq %[3]d ] && [ "$(sha256sum < "$f" | cut -d' ' -f1)" = %[4]s ]; then echo "present $f"; else echo "missing $f"; fi`,
		BinaryDir, name, size, sum)
	var out, errOut bytes.Buffer
	if err := c.Run(ctx, check, nil, &out, &errOut); err != nil {
		return "", fmt.Errorf("copy drover: check for %s: %w%s", name, err, stderrSuffix(&errOut))
	}
	platform, answer, _ := strings.Cut(strings.TrimSpace(out.String()), "\n")
	if b.Platform != "" && strings.TrimSpace(platform) != b.Platform {
		return "", &PlatformError{Host: c.name, Got: strings.TrimSpace(platform), Want: b.Platform}
	}
	state, path, _ := strings.Cut(strings.TrimSpace(answer), " ")
	if state == "unsafe" && path != "" {
		return "", &UnsafeBinaryDirError{Host: c.name, Reason: path}
	}
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
if [ -L "$d" ] || [ ! -d "$d" ]; then echo "$d changed since it was checked" >&2; exit 3; fi
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
