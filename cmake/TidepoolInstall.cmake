# Installation (cmake --install) and Debian packages (cpack, make package):
# docs/build.md "Install and package". Included by the top-level
# CMakeLists.txt after every target exists.
#
# What goes where (GNUInstallDirs, relative to the prefix given at install
# time, so one build tree serves `cmake --install --prefix /usr/local`, a
# DESTDIR staging tree and the packages, whose prefix is /usr):
#   bin/                          tidepoold, tidepoolctl
#   lib/                          libtidepool{,_optim}.so.0 and .a
#   include/tidepool/             the public headers
#   lib/cmake/tidepool/           find_package(tidepool CONFIG)
#   lib/pkgconfig/                tidepool.pc, tidepool-optim.pc
#   lib/systemd/system/           tidepoold.service (ExecStart rewritten)
#   lib/sysusers.d/tidepool.conf  the tidepool user and group
#   <sysconfdir>/tidepool/        tidepoold.toml (/etc for prefix /usr)
#   share/doc/<package>/          README, operations, build docs, copyright

include(GNUInstallDirs)
include(CMakePackageConfigHelpers)
# Installing and packaging never build: cpack (and `make install`) run the
# generator's preinstall target, which otherwise builds `all` first. The
# packaging tests run cpack in a built tree while other tests run, where a
# rebuild would race them; `make package` builds before it packages.
set(CMAKE_SKIP_INSTALL_ALL_DEPENDENCY ON)
# client/CMakeLists.txt finds Gloo for its directory only; the installed
# optimizer links the same imported target from here.
if(NOT TARGET gloo)
  find_package(Gloo CONFIG REQUIRED HINTS /usr/share/cmake/Gloo)
endif()

# --- The installable libraries -----------------------------------------------
#
# In the build tree libtidepool (target tidepool) and the optimizer
# (tidepool_optim) are static libraries over further internal static
# libraries (tidepool_common, tidepool_proto, tidepool_proto_convert, the
# kernels). A consumer should link one library of ours, not six, so each
# installed library is made of the objects of the whole internal closure:
# once as a shared library (tidepool_shared) and once as an archive
# (tidepool_static), both named libtidepool. What the closure links outside
# the project (gRPC, protobuf, Abseil, the CUDA runtime, Gloo, NCCL) becomes
# the static library's link interface; the config file and the .pc file find
# it for the consumer. Walking the targets instead of listing their
# dependencies here keeps the installed libraries in step with
# client/CMakeLists.txt.

# _tidepool_closure(ROOT STOP OUT_TARGETS OUT_EXTERNAL): the project's
# targets reachable from ROOT (not crossing STOP, a list of targets another
# installed library provides) and the external link items they use.
function(_tidepool_closure root stop out_targets out_external)
  set(queue ${root})
  set(seen)
  set(external)
  while(queue)
    list(POP_FRONT queue t)
    if(t IN_LIST seen OR t IN_LIST stop)
      continue()
    endif()
    list(APPEND seen ${t})
    get_target_property(type ${t} TYPE)
    if(type STREQUAL "INTERFACE_LIBRARY")
      get_target_property(deps ${t} INTERFACE_LINK_LIBRARIES)
    else()
      get_target_property(deps ${t} LINK_LIBRARIES)
    endif()
    if(NOT deps)
      continue()
    endif()
    foreach(d ${deps})
      if(TARGET ${d})
        get_target_property(imported ${d} IMPORTED)
        if(NOT imported AND d MATCHES "^tidepool")
          list(APPEND queue ${d})
          continue()
        endif()
      endif()
      list(APPEND external ${d})
    endforeach()
  endwhile()
  list(REMOVE_DUPLICATES external)
  set(${out_targets} ${seen} PARENT_SCOPE)
  set(${out_external} ${external} PARENT_SCOPE)
endfunction()

# _tidepool_objects(TARGETS OUT): $<TARGET_OBJECTS:...> of the static ones.
function(_tidepool_objects targets out)
  set(objects)
  foreach(t ${targets})
    get_target_property(type ${t} TYPE)
    if(type STREQUAL "STATIC_LIBRARY")
      list(APPEND objects $<TARGET_OBJECTS:${t}>)
    endif()
  endforeach()
  set(${out} ${objects} PARENT_SCOPE)
endfunction()

# NCCL is a plain library path in the build (find_library); installed, the
# config file finds it again and names it tidepool::nccl.
function(_tidepool_install_interface items out)
  set(result)
  foreach(i ${items})
    if(TIDEPOOL_NCCL_LIBRARY AND i STREQUAL TIDEPOOL_NCCL_LIBRARY)
      list(APPEND result "$<BUILD_INTERFACE:${i}>"
           "$<INSTALL_INTERFACE:tidepool::nccl>")
    else()
      list(APPEND result ${i})
    endif()
  endforeach()
  set(${out} ${result} PARENT_SCOPE)
endfunction()

set(TIDEPOOL_SOVERSION 0)
# The public headers include Abseil's status types and string_view.
set(_tidepool_public_deps absl::status absl::statusor absl::strings)

# _tidepool_installed_pair(PREFIX EXPORT ROOT OUTPUT_NAME STOP SHARED_DEP
#                          STATIC_DEP): targets PREFIX_shared and
# PREFIX_static, exported as tidepool::EXPORT and tidepool::EXPORT_static,
# from the closure of ROOT; sets EXPORT_EXTERNAL.
function(_tidepool_installed_pair name export root output_name stop
         shared_dep static_dep)
  _tidepool_closure(${root} "${stop}" targets external)
  _tidepool_objects("${targets}" objects)
  _tidepool_install_interface("${external}" static_interface)

  add_library(${name}_shared SHARED ${objects})
  add_library(${name}_static STATIC ${objects})
  foreach(kind shared static)
    set(t ${name}_${kind})
    set_target_properties(${t} PROPERTIES OUTPUT_NAME ${output_name}
        LINKER_LANGUAGE CXX
        ARCHIVE_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR}/lib
        LIBRARY_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR}/lib)
    target_include_directories(${t} INTERFACE
        $<BUILD_INTERFACE:${PROJECT_SOURCE_DIR}/client/include>
        $<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}>)
    target_compile_features(${t} INTERFACE cxx_std_20)
  endforeach()
  set_target_properties(${name}_shared PROPERTIES
      VERSION ${PROJECT_VERSION} SOVERSION ${TIDEPOOL_SOVERSION}
      EXPORT_NAME ${export})
  set_target_properties(${name}_static PROPERTIES
      EXPORT_NAME ${export}_static)
  # The shared library resolves its dependencies itself: a consumer sees
  # the headers' Abseil only.
  target_link_libraries(${name}_shared PUBLIC ${_tidepool_public_deps}
                        ${shared_dep} PRIVATE ${external})
  target_link_libraries(${name}_static PUBLIC ${_tidepool_public_deps}
                        ${static_dep} ${static_interface})
  set(${export}_EXTERNAL ${external} PARENT_SCOPE)
endfunction()

# tidepool::tidepool, tidepool::tidepool_static, tidepool::optim,
# tidepool::optim_static.
_tidepool_installed_pair(tidepool tidepool tidepool tidepool "" "" "")
_tidepool_closure(tidepool "" _tidepool_session_targets _unused)
_tidepool_installed_pair(tidepool_optim optim tidepool_optim tidepool_optim
    "${_tidepool_session_targets}" tidepool_shared tidepool_static)

install(TARGETS tidepool_shared tidepool_optim_shared EXPORT tidepoolTargets
        LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT runtime
                NAMELINK_COMPONENT dev)
install(TARGETS tidepool_static tidepool_optim_static EXPORT tidepoolTargets
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT dev)
install(DIRECTORY ${PROJECT_SOURCE_DIR}/client/include/tidepool
        DESTINATION ${CMAKE_INSTALL_INCLUDEDIR} COMPONENT dev
        FILES_MATCHING PATTERN "*.h")

# --- CMake package -------------------------------------------------------------

set(TIDEPOOL_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/tidepool)
install(EXPORT tidepoolTargets NAMESPACE tidepool::
        DESTINATION ${TIDEPOOL_CMAKE_DIR} COMPONENT dev)
# find_dependency lines for what the static libraries link (the shared ones
# need Abseil only, but one config serves both).
set(TIDEPOOL_FIND_DEPENDENCIES "")
set(_all_external ${tidepool_EXTERNAL} ${optim_EXTERNAL})
macro(_tidepool_needs pattern line)
  foreach(i ${_all_external})
    if(i MATCHES "${pattern}")
      string(APPEND TIDEPOOL_FIND_DEPENDENCIES "${line}\n")
      break()
    endif()
  endforeach()
endmacro()
_tidepool_needs("^Threads::" "find_dependency(Threads)")
_tidepool_needs("^protobuf::" "find_dependency(Protobuf)")
_tidepool_needs("^gRPC::" "find_dependency(gRPC CONFIG)")
_tidepool_needs("^glog::" "find_dependency(glog CONFIG)")
_tidepool_needs("^gloo$" "find_dependency(Gloo CONFIG HINTS /usr/share/cmake/Gloo)")
_tidepool_needs("^CUDA::" "find_dependency(CUDAToolkit)")
foreach(i ${_all_external})
  if(i MATCHES "^PkgConfig::")
    message(FATAL_ERROR "tidepool: the installed libraries link ${i}; "
            "cmake/tidepool-config.cmake.in cannot find it for a consumer")
  endif()
endforeach()
set(TIDEPOOL_NEEDS_NCCL OFF)
if(TIDEPOOL_NCCL_LIBRARY AND TIDEPOOL_NCCL_LIBRARY IN_LIST optim_EXTERNAL)
  set(TIDEPOOL_NEEDS_NCCL ON)
endif()
configure_package_config_file(
    ${PROJECT_SOURCE_DIR}/cmake/tidepool-config.cmake.in
    ${PROJECT_BINARY_DIR}/tidepool-config.cmake
    INSTALL_DESTINATION ${TIDEPOOL_CMAKE_DIR})
write_basic_package_version_file(
    ${PROJECT_BINARY_DIR}/tidepool-config-version.cmake
    COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/tidepool-config.cmake
              ${PROJECT_BINARY_DIR}/tidepool-config-version.cmake
        DESTINATION ${TIDEPOOL_CMAKE_DIR} COMPONENT dev)

# --- pkg-config ----------------------------------------------------------------
#
# Requires.private / Libs.private are what `pkg-config --static` adds. Debian
# ships .pc files for gRPC, protobuf and Abseil; the CUDA runtime, Gloo and
# NCCL have none, so they are plain -L/-l flags.
function(_tidepool_pc_private items out_requires out_libs)
  set(requires)
  set(libs)
  # -L for the linker's own directories (/usr/lib) is noise.
  macro(_add_lib dir name)
    if(NOT "${dir}" IN_LIST CMAKE_CXX_IMPLICIT_LINK_DIRECTORIES)
      list(APPEND libs -L${dir})
    endif()
    list(APPEND libs -l${name})
  endmacro()
  foreach(i ${items})
    if(i MATCHES "^absl::(.*)$")
      list(APPEND requires absl_${CMAKE_MATCH_1})
    elseif(i STREQUAL "protobuf::libprotobuf")
      list(APPEND requires protobuf)
    elseif(i MATCHES "^gRPC::(grpc\\+\\+|grpc)$")
      list(APPEND requires ${CMAKE_MATCH_1})
    elseif(i STREQUAL "Threads::Threads")
      list(APPEND libs -pthread)
    elseif(i STREQUAL "CUDA::cudart")
      _add_lib(${CUDAToolkit_LIBRARY_DIR} cudart)
    elseif(i STREQUAL "gloo")
      get_target_property(gloo_location gloo LOCATION)
      get_filename_component(gloo_dir ${gloo_location} DIRECTORY)
      _add_lib(${gloo_dir} gloo)
    elseif(TIDEPOOL_NCCL_LIBRARY AND i STREQUAL TIDEPOOL_NCCL_LIBRARY)
      get_filename_component(nccl_dir ${i} DIRECTORY)
      _add_lib(${nccl_dir} nccl)
    else()
      message(FATAL_ERROR "tidepool: no pkg-config name for ${i}; "
              "teach _tidepool_pc_private in cmake/TidepoolInstall.cmake")
    endif()
  endforeach()
  list(REMOVE_DUPLICATES requires)
  list(REMOVE_DUPLICATES libs)
  list(JOIN requires ", " requires)
  list(JOIN libs " " libs)
  set(${out_requires} "${requires}" PARENT_SCOPE)
  set(${out_libs} "${libs}" PARENT_SCOPE)
endfunction()

# The public requirement: Abseil's headers (and its libraries, which the
# inline parts of StatusOr call).
set(TIDEPOOL_PC_REQUIRES "absl_status, absl_statusor, absl_strings")
_tidepool_pc_private("${tidepool_EXTERNAL}" TIDEPOOL_PC_REQUIRES_PRIVATE
                     TIDEPOOL_PC_LIBS_PRIVATE)
_tidepool_pc_private("${optim_EXTERNAL}" TIDEPOOL_OPTIM_PC_REQUIRES_PRIVATE
                     TIDEPOOL_OPTIM_PC_LIBS_PRIVATE)
# The .pc files locate everything relative to their own directory
# (${pcfiledir}), so a DESTDIR tree or another prefix works unchanged.
file(RELATIVE_PATH TIDEPOOL_PC_TO_PREFIX
     /prefix/${CMAKE_INSTALL_LIBDIR}/pkgconfig /prefix)
string(REGEX REPLACE "/$" "" TIDEPOOL_PC_TO_PREFIX "${TIDEPOOL_PC_TO_PREFIX}")
configure_file(${PROJECT_SOURCE_DIR}/cmake/tidepool.pc.in
               ${PROJECT_BINARY_DIR}/pkgconfig/tidepool.pc @ONLY)
configure_file(${PROJECT_SOURCE_DIR}/cmake/tidepool-optim.pc.in
               ${PROJECT_BINARY_DIR}/pkgconfig/tidepool-optim.pc @ONLY)
install(FILES ${PROJECT_BINARY_DIR}/pkgconfig/tidepool.pc
              ${PROJECT_BINARY_DIR}/pkgconfig/tidepool-optim.pc
        DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig COMPONENT dev)

# --- The daemon, its unit, user and configuration -------------------------------

install(TARGETS tidepoold tidepoolctl
        RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR} COMPONENT daemon)
install(FILES ${PROJECT_SOURCE_DIR}/deploy/systemd/tidepool.sysusers
        DESTINATION lib/sysusers.d RENAME tidepool.conf COMPONENT daemon)

# The unit in deploy/ is the one the packages install (/usr/bin/tidepoold,
# /etc/tidepool/tidepoold.toml). For any other prefix its ExecStart is
# rewritten at install time, when the prefix is known: `cmake --install
# --prefix` and CPack choose it after configuration, so the usual
# configure_file would write the wrong paths. The configuration directory
# follows GNUInstallDirs: /etc for the prefix /usr, /etc/opt/X for /opt/X,
# PREFIX/etc otherwise, unless CMAKE_INSTALL_SYSCONFDIR was set absolute.
install(CODE "
  set(_tp_prefix \"\${CMAKE_INSTALL_PREFIX}\")
  set(_tp_sysconf \"${CMAKE_INSTALL_SYSCONFDIR}\")
  if(IS_ABSOLUTE \"\${_tp_sysconf}\")
  elseif(_tp_prefix MATCHES \"^/usr/?$\")
    set(_tp_sysconf /etc)
  elseif(_tp_prefix MATCHES \"^/opt/\")
    set(_tp_sysconf \"/etc\${_tp_prefix}\")
  else()
    set(_tp_sysconf \"\${_tp_prefix}/\${_tp_sysconf}\")
  endif()
  set(_tp_bin \"${CMAKE_INSTALL_BINDIR}\")
  if(NOT IS_ABSOLUTE \"\${_tp_bin}\")
    set(_tp_bin \"\${_tp_prefix}/\${_tp_bin}\")
  endif()
  file(READ \"${PROJECT_SOURCE_DIR}/deploy/systemd/tidepoold.service\" _tp_unit)
  string(REPLACE \"ExecStart=/usr/bin/tidepoold --config=/etc/tidepool/\"
         \"ExecStart=\${_tp_bin}/tidepoold --config=\${_tp_sysconf}/tidepool/\"
         _tp_unit \"\${_tp_unit}\")
  file(WRITE \"${PROJECT_BINARY_DIR}/install/tidepoold.service\" \"\${_tp_unit}\")
  file(INSTALL DESTINATION \"\${_tp_prefix}/lib/systemd/system\" TYPE FILE
       FILES \"${PROJECT_BINARY_DIR}/install/tidepoold.service\")
  file(INSTALL DESTINATION \"\${_tp_sysconf}/tidepool\" TYPE FILE
       FILES \"${PROJECT_SOURCE_DIR}/deploy/config/tidepoold.toml\")
" COMPONENT daemon)

# --- Documentation, copyright, changelog ----------------------------------------
#
# Debian wants /usr/share/doc/<package>/copyright and a changelog in every
# package; `cmake --install` puts the same files under share/doc/<package>.
set(TIDEPOOL_DEB_RELEASE 1)
set(TIDEPOOL_DEB_VERSION ${PROJECT_VERSION}-${TIDEPOOL_DEB_RELEASE})
set(TIDEPOOL_DEB_MAINTAINER "tidepool maintainers <maintainers@tidepool.invalid>")
configure_file(${PROJECT_SOURCE_DIR}/deploy/debian/changelog.in
               ${PROJECT_BINARY_DIR}/install/changelog.Debian @ONLY)
find_program(TIDEPOOL_GZIP gzip REQUIRED)
# gzip -9n: no name or time stamp in the header, so that rebuilding the
# packages gives the same bytes.
add_custom_command(
    OUTPUT ${PROJECT_BINARY_DIR}/install/changelog.Debian.gz
    COMMAND ${TIDEPOOL_GZIP} -9nkf ${PROJECT_BINARY_DIR}/install/changelog.Debian
    DEPENDS ${PROJECT_BINARY_DIR}/install/changelog.Debian
    VERBATIM)
add_custom_target(tidepool_changelog ALL
                  DEPENDS ${PROJECT_BINARY_DIR}/install/changelog.Debian.gz)
foreach(entry daemon:tidepoold runtime:libtidepool0 dev:libtidepool-dev)
  string(REPLACE ":" ";" entry ${entry})
  list(GET entry 0 component)
  list(GET entry 1 package)
  install(FILES ${PROJECT_SOURCE_DIR}/deploy/debian/copyright
                ${PROJECT_BINARY_DIR}/install/changelog.Debian.gz
          DESTINATION ${CMAKE_INSTALL_DATAROOTDIR}/doc/${package}
          COMPONENT ${component})
endforeach()
install(FILES ${PROJECT_SOURCE_DIR}/README.md
              ${PROJECT_SOURCE_DIR}/docs/operations.md
              ${PROJECT_SOURCE_DIR}/docs/protocol.md
        DESTINATION ${CMAKE_INSTALL_DATAROOTDIR}/doc/tidepoold COMPONENT daemon)
install(FILES ${PROJECT_SOURCE_DIR}/docs/build.md
              ${PROJECT_SOURCE_DIR}/docs/optimizer.md
        DESTINATION ${CMAKE_INSTALL_DATAROOTDIR}/doc/libtidepool-dev
        COMPONENT dev)
include(TidepoolPackaging)
