package ssh

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/kevinburke/ssh_config"
)

// Config says how to reach one host. Fields left zero come from the
// OpenSSH client config (SSHConfig), then from OpenSSH's defaults.
type Config struct {
	Name         string        // display name used in errors and logs; default Host
	Host         string        // address or ~/.ssh/config alias
	Port         int           // 0 = from ssh config or 22
	User         string        // "" = from ssh config or the current user
	IdentityFile string        // optional; tried first, then ssh config's IdentityFile, then ssh-agent (SSH_AUTH_SOCK)
	KnownHosts   string        // default: ssh config's UserKnownHostsFile, else ~/.ssh/known_hosts
	AcceptNew    bool          // add unknown host keys to KnownHosts; a changed key is always refused
	SSHConfig    string        // default ~/.ssh/config (missing is fine); HostName, User, Port, IdentityFile, UserKnownHostsFile and a one-hop ProxyJump are honoured; the jump host is checked against the same known_hosts and also offered IdentityFile
	DialTimeout  time.Duration // TCP connect plus SSH handshake, per hop; default 15s
	Logger       *slog.Logger  // default: discard
}

const defaultDialTimeout = 15 * time.Second

// hop is one resolved SSH server: where it is, who to log in as, which
// keys to offer and how to check its host key.
type hop struct {
	name       string   // for messages
	host       string   // HostName
	port       int      // resolved port
	user       string   // resolved user
	explicitID string   // Config.IdentityFile
	configIDs  []string // ssh config IdentityFile, expanded
	proxyJump  string   // "" or "[user@]host[:port]" (one hop)
	knownHosts string
	acceptNew  bool
	timeout    time.Duration
}

func (h hop) addr() string { return net.JoinHostPort(h.host, strconv.Itoa(h.port)) }

// sshConfigFile is a parsed OpenSSH client config, or nil when there is none.
type sshConfigFile struct {
	path string
	cfg  *ssh_config.Config
}

func loadSSHConfig(path string) (*sshConfigFile, error) {
	explicit := path != ""
	if !explicit {
		home, err := os.UserHomeDir()
		if err != nil {
			return &sshConfigFile{}, nil
		}
		path = filepath.Join(home, ".ssh", "config")
	}
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) && !explicit {
		return &sshConfigFile{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read ssh config: %w", err)
	}
	defer f.Close()
	cfg, err := ssh_config.Decode(f)
	if err != nil {
		return nil, fmt.Errorf("parse ssh config %s: %w", path, err)
	}
	return &sshConfigFile{path: path, cfg: cfg}, nil
}

func (s *sshConfigFile) get(alias, key string) (string, error) {
	if s.cfg == nil {
		return "", nil
	}
	v, err := s.cfg.Get(alias, key)
	if err != nil {
		return "", fmt.Errorf("ssh config %s: host %s: %s: %w", s.path, alias, key, err)
	}
	return strings.TrimSpace(v), nil
}

func (s *sshConfigFile) getAll(alias, key string) ([]string, error) {
	if s.cfg == nil {
		return nil, nil
	}
	v, err := s.cfg.GetAll(alias, key)
	if err != nil {
		return nil, fmt.Errorf("ssh config %s: host %s: %s: %w", s.path, alias, key, err)
	}
	return v, nil
}

// resolve fills in what c leaves open from the ssh config and defaults.
func resolve(c Config, sc *sshConfigFile) (hop, error) {
	alias := c.Host
	if alias == "" {
		return hop{}, errors.New("no host given")
	}
	h := hop{
		name: c.Name, host: alias, port: c.Port, user: c.User, explicitID: c.IdentityFile,
		knownHosts: c.KnownHosts, acceptNew: c.AcceptNew, timeout: c.DialTimeout,
	}
	if h.name == "" {
		h.name = alias
	}
	if h.timeout <= 0 {
		h.timeout = defaultDialTimeout
	}
	if v, err := sc.get(alias, "HostName"); err != nil {
		return hop{}, err
	} else if v != "" {
		h.host = strings.ReplaceAll(v, "%h", alias)
	}
	if h.port == 0 {
		v, err := sc.get(alias, "Port")
		if err != nil {
			return hop{}, err
		}
		h.port = 22
		if v != "" {
			if h.port, err = strconv.Atoi(v); err != nil || h.port <= 0 || h.port > 65535 {
				return hop{}, fmt.Errorf("ssh config %s: host %s: bad Port %q", sc.path, alias, v)
			}
		}
	}
	if h.user == "" {
		v, err := sc.get(alias, "User")
		if err != nil {
			return hop{}, err
		}
		h.user = v
	}
	if h.user == "" {
		h.user = currentUser()
	}
	home, _ := os.UserHomeDir()
	expand := func(p string) string {
		p = strings.NewReplacer("%d", home, "%u", currentUser(), "%r", h.user, "%h", h.host, "%%", "%").Replace(p)
		if p == "~" || strings.HasPrefix(p, "~/") {
			p = filepath.Join(home, p[1:])
		}
		return p
	}
	ids, err := sc.getAll(alias, "IdentityFile")
	if err != nil {
		return hop{}, err
	}
	for _, id := range ids {
		h.configIDs = append(h.configIDs, expand(strings.TrimSpace(id)))
	}
	if h.explicitID != "" {
		h.explicitID = expand(h.explicitID)
	}
	if h.knownHosts == "" {
		v, err := sc.get(alias, "UserKnownHostsFile")
		if err != nil {
			return hop{}, err
		}
		if f := strings.Fields(v); len(f) > 0 && f[0] != "none" {
			h.knownHosts = expand(f[0])
		}
	}
	if h.knownHosts == "" {
		h.knownHosts = filepath.Join(home, ".ssh", "known_hosts")
	}
	pj, err := sc.get(alias, "ProxyJump")
	if err != nil {
		return hop{}, err
	}
	if pj != "" && !strings.EqualFold(pj, "none") {
		if strings.Contains(pj, ",") {
			return hop{}, fmt.Errorf("ssh config %s: host %s: ProxyJump %q has several hops; drover supports one", sc.path, alias, pj)
		}
		h.proxyJump = pj
	}
	return h, nil
}

// jumpConfig turns a ProxyJump value "[user@]host[:port]" (host may be an
// alias) into a Config for the jump host, keeping c's trust settings.
func jumpConfig(c Config, spec string) (Config, error) {
	spec = strings.TrimPrefix(spec, "ssh://")
	j := Config{
		KnownHosts: c.KnownHosts, AcceptNew: c.AcceptNew, SSHConfig: c.SSHConfig,
		DialTimeout: c.DialTimeout, Logger: c.Logger, IdentityFile: c.IdentityFile,
	}
	if i := strings.LastIndexByte(spec, '@'); i >= 0 {
		j.User, spec = spec[:i], spec[i+1:]
	}
	j.Host = spec
	if host, port, err := net.SplitHostPort(spec); err == nil {
		p, err := strconv.Atoi(port)
		if err != nil || p <= 0 || p > 65535 {
			return Config{}, fmt.Errorf("ProxyJump %q: bad port", spec)
		}
		j.Host, j.Port = host, p
	}
	if j.Host == "" {
		return Config{}, fmt.Errorf("ProxyJump %q: no host", spec)
	}
	j.Name = j.Host
	return j, nil
}

func currentUser() string {
	if u, err := user.Current(); err == nil && u.Username != "" {
		return u.Username
	}
	return os.Getenv("USER")
}
