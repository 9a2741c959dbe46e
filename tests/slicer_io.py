"""Load files exactly as 3D Slicer does, with Slicer's own MRML library (``slicer-core``: no Qt, no GUI): volumes,
label maps and markups.

Slicer reads volumes through ``vtkMRMLVolumeArchetypeStorageNode`` into a scalar volume node (images) or a labelmap
volume node (segmentation results); what matters to a user is that both land on the same voxel grid: same
dimensions and the same IJK-to-RAS matrix.

slicer-core's ITK build has no PNG reader; real Slicer reads a PNG through ITK's PNG reader, whose geometry (unit
spacing, zero origin, identity direction) is what SimpleITK reports too. ``load_reference_volume`` therefore
converts a PNG to NRRD with SimpleITK first and lets Slicer's storage node read that.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import slicer
import vtk
from vtk.util.numpy_support import vtk_to_numpy


@dataclass
class SlicerVolume:
    """What Slicer shows: the voxel array (K, J, I order), dimensions (I, J, K) and the IJK-to-RAS matrix."""

    array: np.ndarray
    dimensions: tuple[int, int, int]
    ijk_to_ras: np.ndarray


def read_volume_node(path: str | Path, labelmap: bool = False):
    """Read ``path`` with Slicer's volume archetype storage node into a scalar or labelmap volume node in a new
    scene; returns the node (its scene stays alive with it)."""
    scene = slicer.vtkMRMLScene()
    node = slicer.vtkMRMLLabelMapVolumeNode() if labelmap else slicer.vtkMRMLScalarVolumeNode()
    scene.AddNode(node)
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    storage.SetSingleFile(True)  # Slicer's "single file" option: do not gather similarly named files as a series
    if labelmap:
        storage.SetUseOrientationFromFile(True)
    if not storage.ReadData(node):
        raise OSError(f"Slicer could not read {path}")
    node._scene = scene  # the node's scene must outlive this function
    return node


def load_volume(path: str | Path, labelmap: bool = False) -> SlicerVolume:
    """Read ``path`` as Slicer does (:func:`read_volume_node`): the voxels and the IJK-to-RAS matrix."""
    node = read_volume_node(path, labelmap)
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    image = node.GetImageData()
    dims = tuple(int(d) for d in image.GetDimensions())
    array = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(dims[::-1])
    ijk_to_ras = np.array([[matrix.GetElement(i, j) for j in range(4)] for i in range(4)])
    return SlicerVolume(array, dims, ijk_to_ras)


def load_reference_volume(path: str | Path, workdir: str | Path) -> SlicerVolume:
    """The input volume node Slicer makes from an image file (PNG through ITK's reader, see the module doc)."""
    path = Path(path)
    if path.suffix.lower() in (".png", ".jpg", ".jpeg"):
        converted = Path(workdir) / (path.stem + "_as_itk_reads_it.nrrd")
        sitk.WriteImage(sitk.ReadImage(str(path)), str(converted))
        path = converted
    return load_volume(path)


def import_segments(path: str | Path, label_names: dict[str, int]) -> dict[str, np.ndarray]:
    """Load a segmentation result into segments as Slicer's MONAI Label module does after **Run**.

    The module (``MONAILabel.py``: ``onClickSegmentation``, ``updateSegmentationMask``) sorts the result's
    ``label_names`` by value, drops ``background`` and imports the labelmap with those names as segment IDs:
    label value ``v`` becomes the ``v``-th name. Returns each segment's binary mask (K, J, I order) by name.
    """
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    if not factory.GetConverterRules():  # Slicer's Segmentations module registers these at start-up
        factory.RegisterConverterRule(slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule())
        factory.RegisterConverterRule(slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule())
    names = [name for name, _ in sorted(label_names.items(), key=lambda item: item[1]) if name != "background"]
    scene = slicer.vtkMRMLScene()
    labelmap = slicer.vtkMRMLLabelMapVolumeNode()
    scene.AddNode(labelmap)
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    storage.SetSingleFile(True)
    storage.SetUseOrientationFromFile(True)
    if not storage.ReadData(labelmap):
        raise OSError(f"Slicer could not read {path}")
    segmentation_node = slicer.vtkMRMLSegmentationNode()
    scene.AddNode(segmentation_node)
    segment_ids = vtk.vtkStringArray()
    for name in names:
        segment_ids.InsertNextValue(name)
    if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(
        labelmap, segmentation_node, segment_ids
    ):
        raise OSError(f"Slicer could not import {path} as segments {names}")
    segmentation = segmentation_node.GetSegmentation()
    dims = labelmap.GetImageData().GetDimensions()
    segments: dict[str, np.ndarray] = {}
    for index in range(segmentation.GetNumberOfSegments()):
        segment_id = segmentation.GetNthSegmentID(index)
        image = slicer.vtkOrientedImageData()
        segmentation_node.GetBinaryLabelmapRepresentation(segment_id, image)
        i0, i1, j0, j1, k0, k1 = image.GetExtent()
        full = np.zeros(dims[::-1], np.uint8)
        if i1 >= i0:  # an empty segment has an empty extent
            values = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(k1 - k0 + 1, j1 - j0 + 1, i1 - i0 + 1)
            full[k0 : k1 + 1, j0 : j1 + 1, i0 : i1 + 1] = values
        segments[segmentation.GetSegment(segment_id).GetName()] = full
    return segments


@dataclass
class SlicerMarkup:
    """A markups node as Slicer holds it after loading a ``.mrk.json``: class, name, control points (RAS) and the
    length Slicer measures (line length, or the closed curve's length along its interpolated curve)."""

    class_name: str
    name: str
    points_ras: np.ndarray
    length: float


def load_markups(path: str | Path) -> list[SlicerMarkup]:
    """Load a markups file as Slicer's **Add Data** / ``slicer.util.loadMarkups`` does: ``vtkSlicerMarkupsLogic``'s
    ``LoadMarkups``, which creates one node per markup in the file (through ``vtkMRMLMarkupsJsonStorageNode``).

    Slicer's scene always has the selection node singleton the logic looks up; a bare scene gets one here.
    """
    scene = slicer.vtkMRMLScene()
    selection = slicer.vtkMRMLSelectionNode()
    selection.SetSingletonTag("Singleton")
    scene.AddNode(selection)
    logic = slicer.vtkSlicerMarkupsLogic()
    logic.SetMRMLScene(scene)
    if not logic.LoadMarkups(str(path)):
        raise OSError(f"Slicer could not load markups from {path}")
    loaded = []
    for class_name in ("vtkMRMLMarkupsLineNode", "vtkMRMLMarkupsClosedCurveNode", "vtkMRMLMarkupsCurveNode"):
        for index in range(scene.GetNumberOfNodesByClass(class_name)):
            node = scene.GetNthNodeByClass(index, class_name)
            if node.GetClassName() != class_name:  # a closed curve is also a curve node
                continue
            points = np.array(
                [list(node.GetNthControlPointPositionWorld(i)) for i in range(node.GetNumberOfControlPoints())]
            )
            length = node.GetLineLengthWorld() if class_name.endswith("LineNode") else node.GetCurveLengthWorld()
            loaded.append(SlicerMarkup(class_name, node.GetName(), points, float(length)))
    return loaded
