// Command drover deploys web applications to fleets of Linux servers.
package main

func main() {}
