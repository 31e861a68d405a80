# `make deb`: build the .deb with debhelper (dpkg-buildpackage), in a private copy of the
# source so the checkout stays clean, and leave it in $(DEB_OUT). Installs the build
# dependencies that debian/control names (apt-get satisfy) when they are missing. The build
# uses the system python3 (a python on PATH from elsewhere would build against itself).
# DEB_VERSION=X.Y.Z builds that version instead (the upgrade and apt-repo tests need two).
DEB_OUT ?= out
DEB_BUILD := build/deb
DEB_VERSION ?=

.PHONY: deb deb-build-deps

deb-build-deps:
	@dpkg-checkbuilddeps >/dev/null 2>&1 || { \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get satisfy -y -qq --no-install-recommends \
	    "$$(sed -n '/^Build-Depends:/,/^[A-Z][A-Za-z-]*:/{/^Build-Depends:/{s/^Build-Depends://;p;d};/^[A-Z]/d;p}' debian/control | tr -d '\n')" >/dev/null; }

deb: deb-build-deps
	rm -rf $(DEB_BUILD) && mkdir -p $(DEB_BUILD)/src $(DEB_OUT)
	@# Files git knows or would take (not ignored), that exist as regular files now.
	git ls-files -co --exclude-standard -z | xargs -0 sh -c 'for f; do [ -f "$$f" ] && printf "%s\0" "$$f"; done' _ \
	  | xargs -0 cp --parents -t $(DEB_BUILD)/src
	$(if $(DEB_VERSION),cd $(DEB_BUILD)/src && packaging/set-version $(DEB_VERSION))
	cd $(DEB_BUILD)/src && env PATH=/usr/sbin:/usr/bin:/sbin:/bin dpkg-buildpackage -us -uc -b >../build.log 2>&1 || { tail -40 ../build.log; exit 1; }
	@cd $(DEB_BUILD) && for f in mipart_*_all.deb; do cp "$$f" "$(abspath $(DEB_OUT))/" && echo "$(abspath $(DEB_OUT))/$$f"; done
