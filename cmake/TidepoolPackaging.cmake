# Debian packages with CPack (`make package`, or `cpack` in a build tree):
#
#   tidepoold        the daemon, tidepoolctl, the systemd unit, the sysusers
#                    file and /etc/tidepool/tidepoold.toml (a conffile)
#   libtidepool0     libtidepool.so.0, libtidepool_optim.so.0
#   libtidepool-dev  headers, static libraries, the .so links, the CMake
#                    package and the pkg-config files
#
# The runtime library has a package of its own, as Debian names shared
# libraries by soname, so that the -dev package (static libraries, headers)
# is needed only to build trainers. Depends of the packages with ELF files
# come from dpkg-shlibdeps, so they follow whatever the binaries link (the
# CUDA runtime and NCCL, from NVIDIA's packages rather than Debian's, carry
# no dependency information and are left out: docs/operations.md).
# Maintainer scripts and the copyright file live in deploy/debian/.

set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME tidepool)
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGE_VENDOR tidepool)
set(CPACK_PACKAGE_CONTACT "${TIDEPOOL_DEB_MAINTAINER}")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY
    "pooled pinned host and GPU memory for training processes")
set(CPACK_PACKAGE_DIRECTORY ${PROJECT_BINARY_DIR}/packages)
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_STRIP_FILES ON)
set(CPACK_DEB_COMPONENT_INSTALL ON)
set(CPACK_COMPONENTS_ALL daemon runtime dev)
set(CPACK_COMPONENTS_GROUPING IGNORE)

set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_RELEASE ${TIDEPOOL_DEB_RELEASE})
set(CPACK_DEBIAN_PACKAGE_MAINTAINER "${TIDEPOOL_DEB_MAINTAINER}")
set(CPACK_DEBIAN_PACKAGE_PRIORITY optional)
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
# dpkg-shlibdeps must find every library the ELF files need, including
# the CUDA runtime where ldconfig does not know the toolkit's directory.
if(TIDEPOOL_HAVE_CUDA)
  set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS_PRIVATE_DIRS ${CUDAToolkit_LIBRARY_DIR})
  if(TIDEPOOL_NCCL_LIBRARY)
    get_filename_component(_tidepool_nccl_dir ${TIDEPOOL_NCCL_LIBRARY}
                           DIRECTORY)
    list(APPEND CPACK_DEBIAN_PACKAGE_SHLIBDEPS_PRIVATE_DIRS
         ${_tidepool_nccl_dir})
  endif()
endif()

set(_deb ${PROJECT_SOURCE_DIR}/deploy/debian)

set(CPACK_DEBIAN_DAEMON_PACKAGE_NAME tidepoold)
set(CPACK_DEBIAN_DAEMON_PACKAGE_SECTION admin)
# The postinst creates the tidepool user with systemd-sysusers.
set(CPACK_DEBIAN_DAEMON_PACKAGE_DEPENDS
    "systemd | systemd-standalone-sysusers | systemd-sysusers")
set(CPACK_DEBIAN_DAEMON_PACKAGE_CONTROL_EXTRA
    ${_deb}/tidepoold/postinst ${_deb}/tidepoold/prerm
    ${_deb}/tidepoold/postrm ${_deb}/tidepoold/conffiles)
set(CPACK_DEBIAN_DAEMON_PACKAGE_CONTROL_STRICT_PERMISSION TRUE)
set(CPACK_COMPONENT_DAEMON_DESCRIPTION
"per-node daemon pooling pinned host and GPU memory for trainers
tidepoold owns a pinned host memory pool and a memory pool on every GPU of
the node and pages the tensors of training processes (linked with
libtidepool) between them, so that models larger than the GPU train.
This package holds the daemon, the tidepoolctl inspection tool, the systemd
unit and the tidepool system user.")

set(CPACK_DEBIAN_RUNTIME_PACKAGE_NAME libtidepool0)
set(CPACK_DEBIAN_RUNTIME_PACKAGE_SECTION libs)
# libc's ldconfig trigger refreshes the loader cache after the libraries
# land in /usr/lib (CPack's own postinst calls ldconfig as well).
set(CPACK_DEBIAN_RUNTIME_PACKAGE_CONTROL_EXTRA ${_deb}/libtidepool0/triggers)
# A shlibs file, so that packages linking libtidepool get the right
# Depends from their own dpkg-shlibdeps; before 1.0 every release may
# change the ABI, hence "=". (CPack has no per-component switch; only
# libtidepool0 holds shared objects.)
set(CPACK_DEBIAN_PACKAGE_GENERATE_SHLIBS ON)
set(CPACK_DEBIAN_PACKAGE_GENERATE_SHLIBS_POLICY "=")
set(CPACK_COMPONENT_RUNTIME_DESCRIPTION
"client library of tidepoold (shared libraries)
libtidepool connects a training process to tidepoold, registers its tensors
and acquires them for computation; libtidepool_optim adds the sharded AdamW
optimizer and its communicators. This package holds the shared libraries.")

set(CPACK_DEBIAN_DEV_PACKAGE_NAME libtidepool-dev)
set(CPACK_DEBIAN_DEV_PACKAGE_SECTION libdevel)
# What the headers and the static libraries need to build a trainer (the
# CMake package and the .pc files find them).
set(CPACK_DEBIAN_DEV_PACKAGE_DEPENDS
    "libtidepool0 (= ${TIDEPOOL_DEB_VERSION}), libabsl-dev, libgrpc++-dev, libprotobuf-dev, libgloo-dev")
set(CPACK_COMPONENT_DEV_DESCRIPTION
"client library of tidepoold (development files)
libtidepool connects a training process to tidepoold, registers its tensors
and acquires them for computation; libtidepool_optim adds the sharded AdamW
optimizer and its communicators. This package holds the headers, the static
libraries, the CMake package (find_package(tidepool)) and the pkg-config
files (tidepool, tidepool-optim).")

# Lintian overrides go into the package only (EXCLUDE_FROM_ALL keeps them
# out of a plain `cmake --install`; CPack installs by component).
install(FILES ${_deb}/libtidepool-dev.lintian-overrides
        DESTINATION share/lintian/overrides RENAME libtidepool-dev
        COMPONENT dev EXCLUDE_FROM_ALL)

include(CPack)
