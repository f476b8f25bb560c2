# Shared CMake helpers: warning/sanitizer flags, module libraries, tests with labels, version info.

# Applies the project's warning and sanitizer settings to one target (host code only: nvcc gets
# its warnings through -Xcompiler and never the sanitizer).
function(kvcal_target_options target)
  target_compile_options(${target} PRIVATE
    $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wno-unused-parameter>
    $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall,-Wextra,-Wno-unused-parameter>)
  if(KVCAL_WERROR)
    target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:-Werror>)
  endif()
  if(KVCAL_SANITIZE)
    target_compile_options(${target} PRIVATE
      $<$<COMPILE_LANGUAGE:CXX>:-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined>)
    target_link_options(${target} PRIVATE -fsanitize=address,undefined)
  endif()
endfunction()

# kvcal_add_module(NAME kvcal_runtime SOURCES a.cpp b.cpp [CUDA_SOURCES k.cu] DEPS ...)
# One static library per top-level module; includes are rooted at the repository
# (#include "runtime/io/safetensors.h"). CUDA_SOURCES are compiled only when nvcc was found.
function(kvcal_add_module)
  cmake_parse_arguments(M "" "NAME" "SOURCES;CUDA_SOURCES;DEPS;PRIVATE_DEPS" ${ARGN})
  set(srcs ${M_SOURCES})
  if(KVCAL_HAVE_CUDA)
    list(APPEND srcs ${M_CUDA_SOURCES})
  endif()
  if(NOT srcs)
    # A module whose first sources have not landed yet: an interface target keeps the
    # dependency graph (and what links against it) in place.
    add_library(${M_NAME} INTERFACE)
    target_include_directories(${M_NAME} INTERFACE ${PROJECT_SOURCE_DIR})
    target_link_libraries(${M_NAME} INTERFACE ${M_DEPS})
    return()
  endif()
  add_library(${M_NAME} STATIC ${srcs})
  target_include_directories(${M_NAME} PUBLIC ${PROJECT_SOURCE_DIR})
  target_link_libraries(${M_NAME} PUBLIC ${M_DEPS} PRIVATE ${M_PRIVATE_DEPS})
  if(KVCAL_HAVE_CUDA)
    target_compile_definitions(${M_NAME} PUBLIC KVCAL_WITH_CUDA=1)
    set_target_properties(${M_NAME} PROPERTIES CUDA_SEPARABLE_COMPILATION OFF)
  endif()
  kvcal_target_options(${M_NAME})
endfunction()

# kvcal_add_test(NAME test_runtime SOURCES ... DEPS ... LABELS cpu [slow] [TIMEOUT s])
# One doctest binary per module, registered as one ctest entry carrying the given labels.
function(kvcal_add_test)
  cmake_parse_arguments(T "" "NAME;TIMEOUT" "SOURCES;DEPS;LABELS;ARGS" ${ARGN})
  add_executable(${T_NAME} ${T_SOURCES})
  target_link_libraries(${T_NAME} PRIVATE kvcal_doctest_main ${T_DEPS})
  target_include_directories(${T_NAME} PRIVATE ${PROJECT_SOURCE_DIR})
  target_compile_definitions(${T_NAME} PRIVATE KVCAL_SOURCE_DIR="${PROJECT_SOURCE_DIR}")
  kvcal_target_options(${T_NAME})
  add_test(NAME ${T_NAME} COMMAND ${T_NAME} ${T_ARGS} WORKING_DIRECTORY ${CMAKE_CURRENT_BINARY_DIR})
  if(NOT T_LABELS)
    message(FATAL_ERROR "kvcal_add_test(${T_NAME}): LABELS is required (cpu / gpu / slow)")
  endif()
  if(NOT T_TIMEOUT)
    set(T_TIMEOUT 1200)
  endif()
  set_tests_properties(${T_NAME} PROPERTIES LABELS "${T_LABELS}" TIMEOUT ${T_TIMEOUT})
endfunction()

# Generates kvcal_version (git commit refreshed at every build, not only at configure time).
function(kvcal_version_target)
  set(out ${PROJECT_BINARY_DIR}/generated/build_info.cpp)
  add_custom_target(kvcal_build_info_gen
    COMMAND ${CMAKE_COMMAND} -DOUT=${out} -DSRC=${PROJECT_SOURCE_DIR}
            -DVERSION=${PROJECT_VERSION} -DCUDA=${KVCAL_HAVE_CUDA}
            -DTORCH_VERSION=${Torch_VERSION}
            -P ${PROJECT_SOURCE_DIR}/cmake/build_info.cmake
    BYPRODUCTS ${out}
    COMMENT "kvcal build info")
  add_library(kvcal_build_info STATIC ${out})
  add_dependencies(kvcal_build_info kvcal_build_info_gen)
  target_include_directories(kvcal_build_info PUBLIC ${PROJECT_SOURCE_DIR})
endfunction()
