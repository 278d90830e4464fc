package service

import (
	"bufio"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// Which process holds which TCP socket, read from /proc: a restart on a
// held socket has two processes accepting on one port, so a health check
// must know which one answered, and status which ones listen.

// tcpState values of /proc/net/tcp.
const tcpListen = "0A"

// tcpInodes returns the inodes of the sockets in /proc/net/tcp and tcp6
// for which match(localPort, remotePort, state) holds.
func tcpInodes(match func(local, remote int, state string) bool) []uint64 {
	var out []uint64
	for _, name := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		f, err := os.Open(name)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		sc.Scan() // header
		for sc.Scan() {
			// sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
			fl := strings.Fields(sc.Text())
			if len(fl) < 10 {
				continue
			}
			local, remote := hexPort(fl[1]), hexPort(fl[2])
			if local < 0 || remote < 0 || !match(local, remote, fl[3]) {
				continue
			}
			if ino, err := strconv.ParseUint(fl[9], 10, 64); err == nil && ino != 0 {
				out = append(out, ino)
			}
		}
		f.Close()
	}
	return out
}

// hexPort returns the port of an "ADDR:PORT" field of /proc/net/tcp.
func hexPort(field string) int {
	i := strings.LastIndexByte(field, ':')
	if i < 0 {
		return -1
	}
	p, err := strconv.ParseUint(field[i+1:], 16, 16)
	if err != nil {
		return -1
	}
	return int(p)
}

// socketInodes returns the socket inodes among the open files of pid.
func socketInodes(pid int) []uint64 {
	dir := filepath.Join("/proc", strconv.Itoa(pid), "fd")
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	var out []uint64
	for _, e := range entries {
		l, err := os.Readlink(filepath.Join(dir, e.Name()))
		if err != nil || !strings.HasPrefix(l, "socket:[") {
			continue
		}
		if ino, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimPrefix(l, "socket:["), "]"), 10, 64); err == nil {
			out = append(out, ino)
		}
	}
	return out
}

// processes returns the pids of every live process for which keep holds.
func processes(keep func(pid int, st procStat) bool) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var out []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		st, err := readStat(pid)
		if err == nil && st.state != 'Z' && st.state != 'X' && keep(pid, st) {
			out = append(out, pid)
		}
	}
	return out
}

// groupHolds reports whether a process of process group pgid has one of
// the sockets inodes open.
func groupHolds(pgid int, inodes []uint64) bool {
	if len(inodes) == 0 {
		return false
	}
	found := false
	processes(func(pid int, st procStat) bool {
		if !found && st.pgrp == pgid {
			for _, ino := range socketInodes(pid) {
				if slices.Contains(inodes, ino) {
					found = true
				}
			}
		}
		return false
	})
	return found
}

// acceptedBy reports whether the server side of the TCP connection from
// client to server is open in process pid or its process group; known is
// false when the connection is not found (the server closed it already).
func acceptedBy(pid int, server, client *net.TCPAddr) (mine, known bool) {
	ino, err := serverInode(server, client)
	if err != nil || ino == 0 {
		return false, false
	}
	if slices.Contains(socketInodes(pid), ino) {
		return true, true
	}
	return groupHolds(pid, []uint64{ino}), true
}

// listenHolders returns the processes, other than except, that hold a
// listening socket on port: those that would accept its connections.
func listenHolders(port, except int) []int {
	inodes := tcpInodes(func(local, _ int, state string) bool { return local == port && state == tcpListen })
	if len(inodes) == 0 {
		return nil
	}
	return processes(func(pid int, _ procStat) bool {
		if pid == except {
			return false
		}
		for _, ino := range socketInodes(pid) {
			if slices.Contains(inodes, ino) {
				return true
			}
		}
		return false
	})
}
